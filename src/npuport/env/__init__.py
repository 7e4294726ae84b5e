"""The `env_probe` stage: versions, hardware, accelerators, container limits and diagnostics."""
