rule repair_config:
    input:
        download=rules.download.output[0],
        introspect=rules.introspect.output[0],
    output:
        config=ARTIFACTS["config"],
        report=ARTIFACTS["repair"],
    log:
        log_file("repair_config"),
    benchmark:
        benchmark_file("repair_config")
    conda:
        "../../envs/cpu.yaml"
    params:
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("repair_config"),
    script:
        "../scripts/repair_config.py"
