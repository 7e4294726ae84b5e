"""Datasets of the npuport_tiny tasks: the JSONL files next to this module.

lm-eval passes ``dataset_kwargs.data_files`` to ``datasets.load_dataset`` as given, so a relative path would be
read from the working directory, not from this folder; ``custom_dataset`` resolves it here instead. The rows
are built in memory (no datasets cache is written, nothing is fetched).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _jsonl_dataset(name: str) -> datasets.DatasetDict:
    lines = (HERE / name).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines if line])})


def mc_dataset(**_metadata) -> datasets.DatasetDict:
    return _jsonl_dataset("mc.jsonl")


def gen_dataset(**_metadata) -> datasets.DatasetDict:
    return _jsonl_dataset("gen.jsonl")
