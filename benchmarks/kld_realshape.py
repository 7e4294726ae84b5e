"""Peak memory and time of compare's full-distribution statistics at the real vocabulary (73,448).

The statistics stream one evaluation segment at a time and, inside it, 128 positions at a time
(npuport.compare.floor.accumulate_segment); this measures that path alone on synthetic logits of the real
vocabulary: engine logits in bfloat16 as the capture stores them, the floor's in bfloat16, the base in
float32, over the default evaluation budget. The reference models themselves are measured by
benchmarks/layers_realshape.py (the float32 reference at the real shape). Prints peak RSS and seconds.

    python benchmarks/kld_realshape.py [--positions 4096] [--segment 1024] [--vocab 73448]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from npuport.compare.floor import accumulate_segment, kld_quantiles
from npuport.compare.statistics import KldAccumulator


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=4096)
    parser.add_argument("--segment", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=73448)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start_rss = peak_rss_mb()
    accumulators = {"engine": KldAccumulator(), "floor": KldAccumulator()}
    start = time.perf_counter()
    for _ in range(0, args.positions, args.segment):
        logits = torch.randn(args.segment, args.vocab) * 3  # the full-precision reference's, one segment
        base = torch.log_softmax(logits, dim=-1)
        engine = (logits + 0.01 * torch.randn_like(logits)).to(torch.bfloat16)
        floor = (logits + 0.01 * torch.randn_like(logits)).to(torch.bfloat16)
        targets = torch.randint(0, args.vocab, (args.segment,)).tolist()
        accumulate_segment(accumulators, base=base, others={"engine": engine, "floor": floor}, targets=targets)
        del logits, base, engine, floor
    summary = accumulators["engine"].summary()
    kld_quantiles(accumulators["engine"])
    seconds = time.perf_counter() - start
    segment_mb = args.segment * args.vocab * (4 + 4 + 2 + 2) / 1e6
    print(f"positions {summary['n']}, vocabulary {args.vocab}, segments of {args.segment}")
    print(f"statistics: {seconds:.1f} s, peak RSS {peak_rss_mb():.0f} MB (process start {start_rss:.0f} MB; one "
          f"segment's logits and log-probabilities {segment_mb:.0f} MB)")  # fmt: skip
    print(f"mean KLD {summary['kld']['mean']:.3e}, same top-1 {summary['same_top1']['p']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
