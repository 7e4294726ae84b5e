"""Throughput of the ternary check (npuport.weights.ternary.groups_are_ternary, in fuse's 1 MiB blocks on one thread).

    python benchmarks/ternary_check.py [--src results/realshape-synthetic-src]

Prints GB/s for a bf16 [6144, 2048] ternary tensor held in memory, and, when the real-shape checkpoint
(resources/make_realshape.py) exists, for every linear of it read through fuse's read-only file map.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from npuport.weights.checkpoint import Checkpoint
from npuport.weights.fuse import _SourceFiles, ternary_group_size
from npuport.weights.ternary import fake_quant, is_quantized_linear

ROOT = Path(__file__).resolve().parents[1]


def in_memory(repeats: int = 5) -> float:
    weight = fake_quant(torch.randn(6144, 2048, generator=torch.Generator().manual_seed(0)), 128).bfloat16()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        assert ternary_group_size(weight) == 128
        best = min(best, time.perf_counter() - start)
    return weight.numel() * weight.element_size() / best / 1e9


def mapped_checkpoint(src: Path) -> tuple[int, float]:
    with Checkpoint.open(src) as checkpoint, _SourceFiles(checkpoint) as source:
        names = [n for n in sorted(checkpoint.tensors) if is_quantized_linear(n)]
        start, nbytes = time.perf_counter(), 0
        for name in names:
            view = source.view(name)
            nbytes += view.numel() * view.element_size()
            assert ternary_group_size(view) is not None, name
            del view
            source.release(name)
        return nbytes, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "results" / "realshape-synthetic-src")
    args = parser.parse_args()
    print(f"in memory, bf16 [6144, 2048]: {in_memory():.2f} GB/s (best of 5)")
    if args.src.exists():
        for run in (1, 2, 3):
            nbytes, seconds = mapped_checkpoint(args.src)
            print(f"mapped linears of {args.src.name}, run {run}: {nbytes / 1e9:.2f} GB in {seconds:.2f} s "
                  f"= {nbytes / seconds / 1e9:.2f} GB/s")  # fmt: skip
    else:
        print(f"{args.src}: not there (python resources/make_realshape.py builds it); mapped check not measured")


if __name__ == "__main__":
    main()
