rule layers:
    input:
        smoke=rules.smoke.output.smoke,
        capture=rules.smoke.output.capture,
        model=rules.fuse.output[0],
    output:
        layers=ARTIFACTS["layers"],
        dumps=directory(ARTIFACTS["dumps"]),
    log:
        log_file("layers"),
    benchmark:
        benchmark_file("layers")
    conda:
        "../../envs/cpu.yaml"
    threads: reference_threads
    resources:
        mem_mb=4000,
    params:
        layers=config["layers"],
        reference_dtype=lambda wildcards: model_section(
            config, wildcards.model, "compare"
        )["reference_dtype"],
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("layers"),
    script:
        "../scripts/layers.py"
