rule compare:
    input:
        smoke=rules.smoke.output.smoke,
        capture=rules.smoke.output.capture,
        baseline=rules.baseline.output[0],
        model=rules.fuse.output[0],
    output:
        ARTIFACTS["compare"],
    log:
        log_file("compare"),
    benchmark:
        benchmark_file("compare")
    conda:
        "../../envs/cpu.yaml"
    threads: reference_threads
    resources:
        mem_mb=4000,
    params:
        compare=model_setting("compare"),
        trust_remote_code=model_field("trust_remote_code", False),
        code=script_code("compare"),
    script:
        "../scripts/compare.py"
