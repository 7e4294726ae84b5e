rule download:
    input:
        local_source_files,
    output:
        directory("results/{model}/download"),
    log:
        "logs/{model}/download.log",
    benchmark:
        "results/{model}/benchmarks/download.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        source=model_field("source"),
        base_dir=workflow.basedir,
        code=module_hash("download", "manifest", "atomic"),
    script:
        "../scripts/download.py"
