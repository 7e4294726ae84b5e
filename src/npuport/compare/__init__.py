"""The `compare` stage: the engine against the reference, token by token and logprob by logprob."""
