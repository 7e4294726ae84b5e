# Stands in for vLLM when .test/engine-unavailable/shim is first on PYTHONPATH: the engine is "not installed".
raise ImportError("vllm is blocked by the test scenario .test/engine-unavailable")
