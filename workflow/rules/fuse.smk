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
        trust_remote_code=model_field("trust_remote_code", False),
        code=module_hash(
            "fuse", "checkpoint", "ternary", "tokenizer_check", "settings", "atomic"
        ),
    script:
        "../scripts/fuse.py"
