rule baseline:
    input:
        model="results/{model}/model",
    output:
        "results/{model}/baseline.json",
    log:
        "logs/{model}/baseline.log",
    benchmark:
        "results/{model}/benchmarks/baseline.tsv"
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    threads: reference_threads
    resources:
        timing=1,
        mem_mb=8000,
        gpu=lambda wildcards: int(
            model_section(config, wildcards.model, "baseline")["device"] == "cuda"
        ),
    params:
        baseline=model_setting("baseline"),
        generation=config["generation"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=module_hash("baseline", "generation", "atomic"),
    script:
        "../scripts/baseline.py"
