rule introspect:
    input:
        download=rules.download.output[0],
    output:
        ARTIFACTS["introspect"],
    log:
        log_file("introspect"),
    benchmark:
        benchmark_file("introspect")
    conda:
        "../../envs/cpu.yaml"
    params:
        introspect=model_setting("introspect"),
        code=script_code("introspect"),
    script:
        "../scripts/introspect.py"
