rule compare:
    input:
        smoke="results/{model}/smoke.json",
        baseline="results/{model}/baseline.json",
        model="results/{model}/model",
    output:
        "results/{model}/compare.json",
    log:
        "logs/{model}/compare.log",
    benchmark:
        "results/{model}/benchmarks/compare.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: reference_threads
    resources:
        mem_mb=4000,
    params:
        compare=config["compare"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=module_hash("compare", "atomic"),
    script:
        "../scripts/compare.py"
