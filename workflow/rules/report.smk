from npuport.index import index_code_hash
from npuport.pipeline_cost import STAGE_ORDER
from npuport.report import relative_paths, report_code_hash


rule report_model:
    input:
        download="results/{model}/download",
        introspect="results/{model}/introspect.json",
        config="results/{model}/config.json",
        repair="results/{model}/repair.json",
        model="results/{model}/model",
        env="results/{model}/env.json",
        smoke="results/{model}/smoke.json",
        baseline="results/{model}/baseline.json",
        compare="results/{model}/compare.json",
        benchmarks=expand("results/{{model}}/benchmarks/{rule}.tsv", rule=STAGE_ORDER),
    output:
        report=report(
            "results/{model}/report.md",
            caption="../report/report_model.rst",
            category="Adaptation reports",
            subcategory="{model}",
            labels={"model": "{model}", "artifact": "report.md"},
        ),
        plots=report(
            directory("results/{model}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
            subcategory="{model}",
            labels={"model": "{model}", "plot": "{name}"},
        ),
        summary="results/{model}/report.json",
    log:
        "logs/{model}/report_model.log",
    benchmark:
        "results/{model}/benchmarks/report_model.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        language=config["report"]["language"],
        configfiles=relative_paths(workflow.configfiles, workflow.basedir),
        code=report_code_hash(),
    script:
        "../scripts/report.py"


rule report_index:
    input:
        reports=per_model("results/{model}/report.md"),
        summaries=per_model("results/{model}/report.json"),
    output:
        report(
            "results/report.md",
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
        code=index_code_hash(),
    script:
        "../scripts/report_index.py"
