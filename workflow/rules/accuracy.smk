rule accuracy_reference:
    input:
        model=rules.fuse.output[0],
        tasks=accuracy_task_files,
    output:
        directory(ARTIFACTS["accuracy_reference"]),
    log:
        log_file("accuracy_reference"),
    benchmark:
        benchmark_file("accuracy_reference")
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
        code=script_code("accuracy_reference"),
    script:
        "../scripts/accuracy_reference.py"


rule accuracy:
    input:
        engine=rules.bench.output.accuracy,
        reference=rules.accuracy_reference.output[0],
    output:
        ARTIFACTS["accuracy"],
    log:
        log_file("accuracy"),
    benchmark:
        benchmark_file("accuracy")
    conda:
        "../../envs/cpu.yaml"
    params:
        accuracy=config["accuracy"],
        code=script_code("accuracy"),
    script:
        "../scripts/accuracy.py"
