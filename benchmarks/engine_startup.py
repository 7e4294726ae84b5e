"""What the offline engine's start costs, with and without `engine.in_process` (issue 19).

    python benchmarks/engine_startup.py [MODEL_DIR] [--repeat 1]

Each variant runs in a fresh Python process (imports included, as in the smoke stage): npuport's VllmRunner with the
default engine settings, `engine.in_process` true (vLLM's VLLM_ENABLE_V1_MULTIPROCESSING=0 and the "uni" executor:
the engine core and the worker in this process) and false (vLLM's default: an engine-core process and a worker
process), then a warm-up request, one greedy request and the shutdown. MODEL_DIR: a fused model directory
(default: the default run's results/tiny-bitcpm/model). Prints one row per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(model_dir: str, in_process: bool) -> dict:
    """One run, in this (fresh) process."""
    started = time.perf_counter()
    from npuport.core.settings import EngineSettings, schema_defaults
    from npuport.engines.vllm_runner import VllmRunner

    engine = EngineSettings.from_config(schema_defaults("engine") | {"in_process": in_process})
    imported = time.perf_counter()
    runner = VllmRunner(model_dir, engine=engine, temperature=0.0, seed=42)
    with runner:
        built = time.perf_counter()
        ids = runner._llm.get_tokenizer().encode("The capital of France is")
        runner.generate_greedy([ids], max_tokens=8, top_logprobs=1, stop_ids=[])
        warm = time.perf_counter()
        runner.generate_greedy([ids], max_tokens=8, top_logprobs=1, stop_ids=[])
        request = time.perf_counter()
    done = time.perf_counter()
    return {"in_process": in_process, "imports_s": imported - started, "construct_s": built - imported,
            "warmup_s": warm - built, "request_s": request - warm, "shutdown_s": done - request,
            "total_s": done - started, "processes_left": runner.shutdown["engine_processes_left"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "results" / "tiny-bitcpm" / "model"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", choices=["true", "false"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model_dir, args.child == "true")))
        return 0
    print(
        "| engine.in_process | imports s | construction s (vLLM import in it) | warm-up s | request s | shutdown s "
        "| total s | left |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for _ in range(args.repeat):
        for in_process in ("false", "true"):
            out = subprocess.run([sys.executable, __file__, args.model_dir, "--child", in_process],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times = [f"{r[key]:.{digits}f}" for key, digits in
                     (("imports_s", 1), ("construct_s", 1), ("warmup_s", 2), ("request_s", 3), ("shutdown_s", 1),
                      ("total_s", 1))]  # fmt: skip
            print(f"| {in_process} | {' | '.join(times)} | {r['processes_left']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
