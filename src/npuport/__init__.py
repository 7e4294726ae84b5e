"""npuport: port a causal-LM checkpoint to an inference engine and prove it."""

__version__ = "0.1.0"
