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
        base_dir=workflow.basedir,
        code=script_code("download"),
    script:
        "../scripts/download.py"
