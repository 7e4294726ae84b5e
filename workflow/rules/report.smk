rule report_model:
    input:
        download=rules.download.output[0],
        introspect=rules.introspect.output[0],
        config=rules.repair_config.output.config,
        repair=rules.repair_config.output.report,
        model=rules.fuse.output[0],
        env=rules.env_probe.output[0],
        smoke=rules.smoke.output.smoke,
        baseline=rules.baseline.output[0],
        compare=rules.compare.output[0],
        layers=rules.layers.output.layers,
        bench=rules.bench.output.bench,
        accuracy=rules.accuracy.output[0],
        benchmarks=[getattr(rules, stage).benchmark for stage in REPORTED_STAGES],
    output:
        report=report(
            ARTIFACTS["report"],
            caption="../report/report_model.rst",
            category="Adaptation reports",
            subcategory="{model}",
            labels={"model": "{model}", "artifact": "report.md"},
        ),
        plots=report(
            directory(ARTIFACTS["plots"]),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
            subcategory="{model}",
            labels={"model": "{model}", "plot": "{name}"},
        ),
        summary=ARTIFACTS["summary"],
    log:
        log_file("report_model"),
    benchmark:
        benchmark_file("report_model")
    conda:
        "../../envs/cpu.yaml"
    params:
        language=config["report"]["language"],
        configfiles=relative_paths(workflow.configfiles),
        stage_targets=stage_targets,
        code=script_code("report"),
    script:
        "../scripts/report.py"


rule report_index:
    input:
        reports=expand(rules.report_model.output.report, model=MODELS),
        summaries=expand(rules.report_model.output.summary, model=MODELS),
    output:
        report(
            ARTIFACTS["index"],
            caption="../report/index.rst",
            category="Adaptation reports",
            subcategory="Index",
            labels={"model": "all", "artifact": "report.md"},
        ),
    log:
        "logs/report_index.log",
    benchmark:
        "results/benchmarks/report_index.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        models=MODELS,
        language=config["report"]["language"],
        code=script_code("report_index"),
    script:
        "../scripts/report_index.py"
