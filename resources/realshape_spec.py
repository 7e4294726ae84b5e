"""The real BitCPM4-CANN-1B shapes (as derived from its weights in the reference report), torch-free so that
measuring processes can import them without paying torch's memory."""

REAL = {
    "hidden_size": 2048,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 6144,
    "vocab_size": 73448,
}


def projection_shapes() -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of the seven projections of one decoder layer."""
    h, i = REAL["hidden_size"], REAL["intermediate_size"]
    q, kv = REAL["num_attention_heads"] * REAL["head_dim"], REAL["num_key_value_heads"] * REAL["head_dim"]
    return {
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
