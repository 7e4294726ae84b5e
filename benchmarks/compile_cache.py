"""What compiling the deployed configuration costs at engine start, and what the compile caches save (issue 26).

    python benchmarks/compile_cache.py [MODEL_DIR] [--repeat 1]

Each run is a fresh Python process (as a smoke stage is) that builds npuport's VllmRunner and serves one request:
eager (enforce_eager true), compiled with empty caches (vLLM's VLLM_CACHE_ROOT and torch inductor's
TORCHINDUCTOR_CACHE_DIR in a new temporary directory), then compiled again on those caches (warm), then on those
caches from a copy of the model at another path (as a fresh clone or a test's workflow copy has it): vLLM's AOT
compile (its default with this torch) keys its cache, torch inductor's included, by the model's path. The same three
compiled runs again with VLLM_USE_AOT_COMPILE=0 (torch inductor's own cache, keyed by the graph). MODEL_DIR: a fused
model directory (default: the default run's results/tiny-bitcpm/model). Prints the engine construction and the
first request's seconds per run, and which cache vLLM reported loading from (its AOT artifact, or none).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(model_dir: str, eager: bool, aot: bool) -> dict:
    from npuport.core.settings import EngineSettings
    from npuport.engines.vllm_runner import VllmRunner

    engine = EngineSettings.from_config(
        {"kv_cache_memory_bytes": 128 << 20, "enforce_eager": eager, "aot_compile": aot}
    )
    runner = VllmRunner(model_dir, engine=engine, temperature=0.0, seed=42)
    with runner:
        built = runner.load_s
        ids = runner._llm.get_tokenizer().encode("The capital of France is")
        started = time.perf_counter()
        out = runner.generate_greedy([ids], max_tokens=8, top_logprobs=5, stop_ids=[])[0]
        first = time.perf_counter() - started
    return {"construct_s": built, "first_request_s": first, "output": [out.token_ids, out.top_logprobs]}


def run(model_dir: str, eager: bool, cache: Path, aot: bool = True) -> dict:
    env = os.environ | {"VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    argv = [sys.executable, __file__, model_dir, "--child", "eager" if eager else "aot" if aot else "noaot"]
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
    parser.add_argument("--child", choices=["eager", "aot", "noaot"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model_dir, args.child == "eager", args.child == "aot")))
        return 0
    print("| engine | caches | construction s | first request s | vLLM AOT artifact | output = first compiled run's |")
    print("|---|---|---:|---:|---|---|")
    first_compiled = None
    runs = (
        ("eager", True, True, "—", False),
        ("compiled, AOT on (vLLM 0.32's default)", False, True, "empty", False),
        ("compiled, AOT on (vLLM 0.32's default)", False, True, "warm (the run before)", False),
        ("compiled, AOT on (vLLM 0.32's default)", False, True, "warm, the model at a new path", True),
        ("compiled, AOT off (aot_compile auto here)", False, False, "empty", False),
        ("compiled, AOT off (aot_compile auto here)", False, False, "warm (the run before)", False),
        ("compiled, AOT off (aot_compile auto here)", False, False, "warm, the model at a new path", True),
    )
    for _ in range(args.repeat):
        for label, eager, aot, caches, moved in runs:
            if caches == "empty" or label == "eager":
                tmp = tempfile.TemporaryDirectory(prefix="npuport-compile-cache-")
            model_dir = args.model_dir
            if moved:  # a copy of the model at a path of its own
                model_dir = shutil.copytree(args.model_dir, Path(tmp.name) / f"model-{time.monotonic_ns()}")
            r = run(str(model_dir), eager, Path(tmp.name), aot)
            first_compiled = first_compiled or (None if eager else r["output"])
            # greedy tokens and top-5 logprobs of the first request, exactly
            same = "—" if eager else "yes" if r["output"] == first_compiled else "NO"
            print(f"| {label} | {caches} | {r['construct_s']:.1f} | {r['first_request_s']:.2f} | {r['aot']} | {same} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
