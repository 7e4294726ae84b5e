"""Engine start, TTFT, TPOT and tokens/s of vLLM (smoke) and transformers (baseline) on one model dir.

    python benchmarks/engines.py MODEL_DIR [--max-tokens 128] [--engine-dtype bfloat16] [--json out.json]

Both engines get the reference prompts and settings (greedy, seed 42); numbers are medians over prompts,
measured after one warm-up request. vLLM's own output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from npuport.core.settings import (
    BaselineSettings,
    EngineSettings,
    GenerationSettings,
    ServeSettings,
    schema_defaults,
)
from npuport.engines.baseline import run_baseline
from npuport.engines.smoke import run_smoke


def median(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r[key] is not None]
    return statistics.median(values) if values else None


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def rate(block: dict | None) -> str:
    return "-" if not block or block.get("tokens_per_s") is None else f"{block['tokens_per_s']:.1f}"


def row(name: str, doc: dict) -> str:
    if doc["status"] != "ok":
        return f"{name:<13} {doc['status']}: {doc['reason']}"
    records, throughput = doc["prompts"], doc["throughput"]
    load = f"{doc['load_seconds']:.2f}"
    return (
        f"{name:<13} {doc['platform']['device'][:50]:<50} {load:>9} {ms(doc['warmup']['latency_s']):>10}"
        f" {ms(median(records, 'ttft_s')):>9} {ms(median(records, 'tpot_s')):>9}"
        f" {rate(throughput['single']):>10} {rate(throughput['batch']):>9}"
    )


def default_prompts() -> list[str]:
    """The default run's prompts (config/config.yaml; the schema has no default for them)."""
    import yaml

    config = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    return yaml.safe_load(config.read_text(encoding="utf-8"))["generation"]["prompts"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    engine_defaults, generation_defaults = schema_defaults("engine"), schema_defaults("generation")
    parser.add_argument("--max-tokens", type=int, default=generation_defaults["max_tokens"])
    parser.add_argument("--engine-dtype", default=engine_defaults["dtype"])
    parser.add_argument("--baseline-dtype", default=schema_defaults("baseline")["dtype"])
    parser.add_argument("--max-model-len", type=int, default=engine_defaults["max_model_len"])
    parser.add_argument("--gpu-memory-utilization", type=float, default=engine_defaults["gpu_memory_utilization"])
    parser.add_argument("--json", help="also write both documents to this file")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    generation = GenerationSettings.from_config({"prompts": default_prompts(), "max_tokens": args.max_tokens})
    engine = EngineSettings.from_config({"dtype": args.engine_dtype, "max_model_len": args.max_model_len,
                                         "gpu_memory_utilization": args.gpu_memory_utilization})  # fmt: skip
    serve = ServeSettings.from_config({"enabled": False})
    smoke = run_smoke(args.model_dir, engine=engine, generation=generation, serve=serve)
    baseline = run_baseline(
        args.model_dir,
        baseline=BaselineSettings.from_config({"dtype": args.baseline_dtype}),
        generation=generation,
        max_model_len=engine.max_model_len,
    )

    print(f"model: {args.model_dir}  prompts: {len(generation.prompts)}  max_tokens: {args.max_tokens}")
    print(f"{'engine':<13} {'device':<50} {'start (s)':>9} {'warmup ms':>10} {'TTFT ms':>9} {'TPOT ms':>9}"
          f" {'tok/s 1req':>10} {'tok/s all':>9}")  # fmt: skip
    print(row(f"vllm {smoke['engine'].get('version', '')}", smoke))
    print(row(f"hf {baseline['engine'].get('version', '')}", baseline))
    if smoke["status"] == "ok":
        kv = smoke["kv_cache"]
        print(f"vLLM KV cache: {kv['tokens']:,} tokens, {kv['gib']} GiB ({kv['gib_source'][:60]})")
    if smoke["status"] == baseline["status"] == "ok":
        same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(smoke["prompts"], baseline["prompts"], strict=True))
        print(f"greedy token ids identical on {same}/{len(smoke['prompts'])} prompts")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"smoke": smoke, "baseline": baseline}, fh, indent=2, ensure_ascii=False)
    return 0 if smoke["status"] == baseline["status"] == "ok" else 1


if __name__ == "__main__":  # vLLM spawns its engine processes, which re-import this file
    sys.exit(main())
