rule bench:
    input:
        model=rules.fuse.output[0],
        smoke=rules.smoke.output.smoke,
        env=rules.env_probe.output[0],
        # the earlier bench.json of the regression gate ({model} filled in), when bench.baseline names one
        baseline=lambda wildcards: (
            [config["bench"]["baseline"].format(model=wildcards.model)]
            if config["bench"]["baseline"]
            else []
        ),
        tasks=accuracy_task_files,
    output:
        bench=ARTIFACTS["bench"],
        results=directory(ARTIFACTS["bench_results"]),
        accuracy=directory(ARTIFACTS["accuracy_engine"]),
    log:
        log_file("bench"),
    benchmark:
        benchmark_file("bench")
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    resources:
        timing=1,
        mem_mb=10000,
        npu=accelerator("npu"),
        gpu=accelerator("gpu"),
    params:
        engine=model_setting("engine"),
        generation=config["generation"],
        serve=config["serve"],
        bench=config["bench"],
        accuracy=config["accuracy"],
        include_path=accuracy_include_path(),
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("bench"),
    script:
        "../scripts/bench.py"
