"""Checkpoints written by transformers' own ``save_pretrained``, with the library's defaults.

Nothing here writes a file of transformers' by hand: a byte-level BPE tokenizer is trained offline with the
``tokenizers`` library and saved through ``PreTrainedTokenizerFast.save_pretrained`` without a length limit (so
``tokenizer_config.json`` carries ``model_max_length`` = transformers' VERY_LARGE_INTEGER, int(1e30)) and with a
chat template; a tiny random ``LlamaForCausalLM`` (the config's defaults but for its size) goes through
``save_pretrained`` with a small ``max_shard_size`` (a sharded index) and, by default, tied embeddings (no
lm_head tensor); its generation config lists two eos ids, as chat models ship them. A model card (README.md) is
written by huggingface_hub's ``ModelCard``, and ``.gitattributes`` holds what ``git lfs track`` writes, as a hub
repository carries them.

Run as a script under any transformers (4.x or 5.x) to write one: ``python tests/pretrained_factory.py OUT
[--untied]``. ``.test/save-pretrained/transformers-4.46/`` was written so (``--untied``) by transformers 4.46.3
(tokenizers 0.20.3, huggingface_hub 0.26.5), the format of most published checkpoints: ``torch_dtype``,
``rope_scaling: null``, ``special_tokens_map.json``, ``added_tokens_decoder`` and the chat template in
``tokenizer_config.json``. ``.test/save-pretrained/installed/`` by the transformers this project installs (5.19.0
when committed; tests/test_save_pretrained.py writes it again with whatever is installed). Neither keeps its
``.gitattributes`` in this repository (git would take it as its own): the test writes it into its copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "resources" / "evaluation.txt"
SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# What `git lfs track "*.safetensors"` writes (the hub's repositories carry a longer list of such lines).
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
# head_dim 32 (hidden / heads): vLLM's CPU attention has no kernel for 16
SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1}  # fmt: skip


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE (every byte a token, so Chinese round-trips), trained on the evaluation text, <s>
    prepended, as a transformers fast tokenizer with no length limit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", SPECIAL.index("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        additional_special_tokens=SPECIAL[3:])  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_pretrained_checkpoint(directory: Path, *, tied: bool = True, max_shard_size: str = "100KB", seed: int = 0):
    """Tokenizer, model and generation config through save_pretrained into ``directory``; returns it."""
    import torch
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(**SIZE, vocab_size=len(tokenizer), tie_word_embeddings=tied,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    card = ModelCard.from_template(ModelCardData(library_name="transformers", license="apache-2.0"))
    card.save(directory / "README.md")
    (directory / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    return directory


if __name__ == "__main__":  # python tests/pretrained_factory.py OUT [--untied]
    print(save_pretrained_checkpoint(Path(sys.argv[1]), tied="--untied" not in sys.argv[2:]))
