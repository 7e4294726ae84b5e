rule report_index:
    input:
        manifest=per_model("results/{model}/download"),
        introspect=per_model("results/{model}/introspect.json"),
        repair=per_model("results/{model}/repair.json"),
        model=per_model("results/{model}/model"),
        env=per_model("results/{model}/env.json"),
        smoke=per_model("results/{model}/smoke.json"),
        baseline=per_model("results/{model}/baseline.json"),
    output:
        report("results/report.md", caption="../report/index.rst", category="Index"),
    log:
        "logs/report_index.log",
    benchmark:
        "results/benchmarks/report_index.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        models=MODELS,
        code=module_hash("index", "atomic"),
    script:
        "../scripts/report_index.py"
