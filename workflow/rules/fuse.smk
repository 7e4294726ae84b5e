rule fuse:
    input:
        download="results/{model}/download",
        config="results/{model}/config.json",
        introspect="results/{model}/introspect.json",
    output:
        directory("results/{model}/model"),
    log:
        "logs/{model}/fuse.log",
    benchmark:
        "results/{model}/benchmarks/fuse.tsv"
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=4000,
    params:
        fuse=model_setting("fuse"),
        code=module_hash("fuse", "checkpoint", "ternary", "settings", "atomic"),
    script:
        "../scripts/fuse.py"
