rule smoke:
    input:
        model="results/{model}/model",
        perplexity_text=config["perplexity"]["text"],
    output:
        "results/{model}/smoke.json",
    log:
        "logs/{model}/smoke.log",
    benchmark:
        "results/{model}/benchmarks/smoke.tsv"
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    resources:
        timing=1,
        mem_mb=10000,
        npu=accelerator("npu"),
        gpu=accelerator("gpu"),
    params:
        engine=model_setting("engine"),
        generation=config["generation"],
        serve=config["serve"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=module_hash("smoke", "serve_check", "generation", "atomic"),
    script:
        "../scripts/smoke.py"
