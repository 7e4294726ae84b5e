rule smoke:
    input:
        model=rules.fuse.output[0],
        evaluation_text=config["evaluation"]["text"],
    output:
        smoke=ARTIFACTS["smoke"],
        capture=directory(ARTIFACTS["capture"]),
    log:
        log_file("smoke"),
    benchmark:
        benchmark_file("smoke")
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    resources:
        timing=1,
        mem_mb=10000,
        npu=accelerator("npu"),
        gpu=accelerator("gpu"),
    params:
        engine=model_setting("engine"),
        deployments=model_setting("deployments"),
        generation=config["generation"],
        evaluation=config["evaluation"],
        layers_eval_tokens=config["layers"]["eval_tokens"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("smoke"),
    script:
        "../scripts/smoke.py"
