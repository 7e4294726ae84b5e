rule introspect:
    input:
        download="results/{model}/download",
    output:
        "results/{model}/introspect.json",
    log:
        "logs/{model}/introspect.log",
    benchmark:
        "results/{model}/benchmarks/introspect.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        introspect=model_setting("introspect"),
        code=module_hash("introspect", "checkpoint", "ternary", "minicpm", "atomic"),
    script:
        "../scripts/introspect.py"
