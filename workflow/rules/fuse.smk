rule fuse:
    input:
        download=rules.download.output[0],
        config=rules.repair_config.output.config,
        introspect=rules.introspect.output[0],
    output:
        directory(ARTIFACTS["model"]),
    log:
        log_file("fuse"),
    benchmark:
        benchmark_file("fuse")
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=4000,
    params:
        fuse=model_setting("fuse"),
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("fuse"),
    script:
        "../scripts/fuse.py"
