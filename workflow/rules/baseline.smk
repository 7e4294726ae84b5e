rule baseline:
    input:
        model=rules.fuse.output[0],
    output:
        ARTIFACTS["baseline"],
    log:
        log_file("baseline"),
    benchmark:
        benchmark_file("baseline")
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    threads: reference_threads
    resources:
        timing=1,
        mem_mb=8000,
        gpu=lambda wildcards: int(
            model_section(config, wildcards.model, "baseline")["device"] == "cuda"
        ),
    params:
        baseline=model_setting("baseline"),
        engine=model_setting("engine"),
        generation=config["generation"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("baseline"),
    script:
        "../scripts/baseline.py"
