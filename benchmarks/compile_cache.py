"""What compiling the deployed configuration costs at engine start, and what the compile caches save (issue 26).

    python benchmarks/compile_cache.py [MODEL_DIR] [--repeat 1]

Each run is a fresh Python process (as a smoke stage is) that builds npuport's VllmRunner and serves one request:
eager (enforce_eager true), compiled with empty caches (vLLM's VLLM_CACHE_ROOT and torch inductor's
TORCHINDUCTOR_CACHE_DIR in a new temporary directory), then compiled again on those caches (warm). MODEL_DIR: a fused
model directory (default: the default run's results/tiny-bitcpm/model). Prints the engine construction and the
first request's seconds per run, and which cache vLLM reported loading from (its AOT artifact, or none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(model_dir: str, eager: bool) -> dict:
    from npuport.core.settings import EngineSettings
    from npuport.engines.vllm_runner import VllmRunner

    engine = EngineSettings.from_config({"kv_cache_memory_bytes": 128 << 20, "enforce_eager": eager})
    runner = VllmRunner(model_dir, engine=engine, temperature=0.0, seed=42)
    with runner:
        built = runner.load_s
        ids = runner._llm.get_tokenizer().encode("The capital of France is")
        started = time.perf_counter()
        runner.generate_greedy([ids], max_tokens=8, top_logprobs=1, stop_ids=[])
        first = time.perf_counter() - started
    return {"construct_s": built, "first_request_s": first}


def run(model_dir: str, eager: bool, cache: Path) -> dict:
    env = os.environ | {"VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    argv = [sys.executable, __file__, model_dir, "--child", "eager" if eager else "compiled"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log = done.stdout + done.stderr
    result["aot"] = (
        "loaded" if "Directly load AOT compilation" in log
        else "load failed, compiled again" if "Compiling model again due to a load failure" in log
        else "none"
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "results" / "tiny-bitcpm" / "model"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model_dir, args.child == "eager")))
        return 0
    print("| engine | caches | construction s | first request s | vLLM AOT artifact |")
    print("|---|---|---:|---:|---|")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="npuport-compile-cache-") as tmp:
            cache = Path(tmp)
            for label, eager, caches in (("eager", True, "—"), ("compiled", False, "empty"),
                                         ("compiled", False, "warm (the run before)")):  # fmt: skip
                r = run(args.model_dir, eager, cache)
                print(f"| {label} | {caches} | {r['construct_s']:.1f} | {r['first_request_s']:.2f} | {r['aot']} |",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
