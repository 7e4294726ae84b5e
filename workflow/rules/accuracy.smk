rule accuracy:
    input:
        model=rules.fuse.output[0],
        engine=rules.bench.output.accuracy,
        tasks=accuracy_task_files,
    output:
        accuracy=ARTIFACTS["accuracy"],
        reference=directory(ARTIFACTS["accuracy_reference"]),
    log:
        log_file("accuracy"),
    benchmark:
        benchmark_file("accuracy")
    conda:
        "../../envs/cpu.yaml"
    threads: reference_threads
    resources:
        mem_mb=8000,
        gpu=lambda wildcards: int(
            model_section(config, wildcards.model, "baseline")["device"] == "cuda"
        ),
    params:
        accuracy=config["accuracy"],
        include_path=accuracy_include_path(),
        baseline=model_setting("baseline"),
        reference_dtype=lambda wildcards: model_section(
            config, wildcards.model, "compare"
        )["reference_dtype"],
        max_model_len=lambda wildcards: model_section(
            config, wildcards.model, "engine"
        )["max_model_len"],
        code=script_code("accuracy"),
    script:
        "../scripts/accuracy.py"
