"""Check that a checkpoint's tokenizer loads and fits the model's embedding."""

from __future__ import annotations

import tempfile
from pathlib import Path

from npuport.atomic import write_json
from npuport.errors import NpuportError
from npuport.manifest import MANIFEST_NAME

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tiktoken.model")


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
        raise NpuportError(
            model_dir, f"tokenizer has {size} tokens but the embedding has only {embedding_rows} rows"
        )
    return {"class": type(tokenizer).__name__, "tokens": size, "embedding_rows": embedding_rows}


def check_checkpoint_tokenizer(download_dir: str | Path, config: dict, trust_remote_code: bool = False) -> dict:
    """check_tokenizer for a downloaded checkpoint against its repaired ``config`` (vocab_size = embedding rows).

    The tokenizer loads from a scratch directory of links to the checkpoint's files beside the repaired
    config.json, so what is checked is what fuse will ship. A config that asks for remote code which is not
    trusted (a MiniCPM download) is left out: AutoTokenizer would try to parse it, and the tokenizer files name
    their class themselves."""
    download_dir = Path(download_dir)
    with tempfile.TemporaryDirectory(prefix="npuport-tokenizer-") as scratch:
        for path in download_dir.iterdir():
            if path.name not in ("config.json", MANIFEST_NAME):
                (Path(scratch) / path.name).symlink_to(path.resolve())
        if trust_remote_code or "auto_map" not in config:
            write_json(Path(scratch) / "config.json", config)
        try:
            return check_tokenizer(scratch, config["vocab_size"], trust_remote_code)
        except NpuportError as exc:
            raise NpuportError(download_dir, exc.problem) from None
