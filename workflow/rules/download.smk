rule download:
    input:
        local_source_files,
    output:
        directory(ARTIFACTS["download"]),
    log:
        log_file("download"),
    benchmark:
        benchmark_file("download")
    conda:
        "../../envs/cpu.yaml"
    params:
        source=model_field("source"),
        code=script_code("download"),
    script:
        "../scripts/download.py"
