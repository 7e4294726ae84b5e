rule repair_config:
    input:
        download="results/{model}/download",
        introspect="results/{model}/introspect.json",
    output:
        config="results/{model}/config.json",
        report="results/{model}/repair.json",
    log:
        "logs/{model}/repair_config.log",
    benchmark:
        "results/{model}/benchmarks/repair_config.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        trust_remote_code=model_field("trust_remote_code", False),
        code=module_hash(
            "repair", "tokenizer_check", "introspect", "manifest", "atomic"
        ),
    script:
        "../scripts/repair_config.py"
