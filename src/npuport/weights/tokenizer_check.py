"""Check that a checkpoint's tokenizer loads and fits the model's embedding."""

from __future__ import annotations

from pathlib import Path

from npuport.core.errors import NpuportError
from npuport.weights.repair_config import repaired_view

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tiktoken.model")
# transformers' VERY_LARGE_INTEGER, int(1e30): what save_pretrained writes as model_max_length for a tokenizer
# without a length limit (transformers' own tests read any value at or above it as "no limit").
VERY_LARGE_INTEGER = int(1e30)


def length_limit(tokenizer) -> int | None:
    """The tokenizer's model_max_length, or None when it has none (absent, or transformers' "no limit")."""
    value = getattr(tokenizer, "model_max_length", None)
    if not isinstance(value, int) or isinstance(value, bool) or value >= VERY_LARGE_INTEGER:
        return None
    return value


def check_tokenizer(model_dir: str | Path, embedding_rows: int, trust_remote_code: bool = False) -> dict:
    """Load the tokenizer; NpuportError when it is missing, broken or larger than the embedding."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not any((model_dir / name).exists() for name in TOKENIZER_FILES):
        raise NpuportError(model_dir, f"no tokenizer in the checkpoint (looked for {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:  # tokenizers fail with many exception types
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NpuportError(model_dir, f"tokenizer does not load: {message}") from None
    size = len(tokenizer)
    if size > embedding_rows:
        raise NpuportError(model_dir, f"tokenizer has {size} tokens but the embedding has only {embedding_rows} rows")
    # model_max_length null: no limit (the engines' length is engine.max_model_len either way)
    return {"class": type(tokenizer).__name__, "tokens": size, "embedding_rows": embedding_rows,
            "model_max_length": length_limit(tokenizer)}  # fmt: skip


def check_checkpoint_tokenizer(download_dir: str | Path, config: dict, trust_remote_code: bool = False) -> dict:
    """check_tokenizer for a downloaded checkpoint against its repaired ``config`` (vocab_size = embedding rows),
    loaded from repair_config.repaired_view: what is checked is what fuse will ship. The tokenizer files name
    their class themselves where the config is left out (untrusted remote code)."""
    download_dir = Path(download_dir)
    with repaired_view(download_dir, config, trust_remote_code) as view:
        try:
            return check_tokenizer(view, config["vocab_size"], trust_remote_code)
        except NpuportError as exc:
            raise NpuportError(download_dir, exc.problem) from None
