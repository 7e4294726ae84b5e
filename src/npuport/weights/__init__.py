"""Weights: read checkpoints, introspect, repair the config, check the tokenizer, ternary QAT, fuse."""
