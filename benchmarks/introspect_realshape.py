"""Introspection time and memory on a checkpoint with the real BitCPM4-CANN-1B shapes.

Builds the checkpoint (hidden 2048, 28 layers, 16 heads, 2 kv heads, head_dim 128, intermediate 6144,
vocab 73448, bf16, untied lm_head, ~3.2 GB of real bytes per format) as model.safetensors and as
pytorch_model.bin, with every quantized projection fully ternary (per group of --group-size), and the
download repo's wrong config.json (sizes off, no head_dim, LongRoPE factors) so the head layout must come
from the rope factors. Then runs introspection in a fresh subprocess per format and prints the wall time
and peak RSS of that child (os.wait4 rusage). Files are read from the page cache (just written), or with
--cold after evicting them from it (posix_fadvise DONTNEED on these files only).

    python benchmarks/introspect_realshape.py [--keep DIR] [--cold] [--formats safetensors bin] [--sample-rows 8]

Targets: safetensors < 1 s and < 300 MB peak RSS; .bin < 5 s and < 500 MB (the introspection call;
the process wall time, which adds interpreter start and the torch import, is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "resources"))
from page_cache import evict  # noqa: E402
from realshape_spec import REAL, projection_shapes  # noqa: E402

# The measuring process never imports torch: a child's peak RSS (ru_maxrss) starts from its parent's RSS at
# fork, so the checkpoint is built in a separate process (--build) and the children are spawned from a small one.

TARGETS = {"safetensors": (1.0, 300), "bin": (5.0, 500)}  # seconds, MB

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from npuport.weights.introspect import introspect_checkpoint
t1 = time.perf_counter()
doc = introspect_checkpoint(sys.argv[1], sample_rows=int(sys.argv[2]))
t2 = time.perf_counter()
doc["derived"]["ternary"].pop("tensors")
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"import_s": t1 - t0, "introspect_s": t2 - t1, "vmhwm_mb": int(hwm[0]) / 1024, "doc": doc}))
"""
IMPORT_ONLY = "import npuport.weights.introspect"


def wrong_config() -> dict:
    """The download repo's config: hidden, layers, heads and intermediate wrong, no head_dim, LongRoPE."""
    factors = [1.0] * (REAL["head_dim"] // 2)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "intermediate_size": 10240,
        "vocab_size": REAL["vocab_size"],
        "max_position_embeddings": 32768,
        "rope_scaling": {
            "rope_type": "longrope",
            "long_factor": factors,
            "short_factor": factors,
            "original_max_position_embeddings": 32768,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def tensor_plan(group_size: int) -> list[tuple]:
    """(name, shape, dtype, producer) for every tensor; ternary projections are generated once and reused."""
    import torch

    from npuport.weights.ternary import QUANTIZED_PROJECTIONS, fake_quant

    g = torch.Generator().manual_seed(0)
    bf16 = torch.bfloat16
    shapes = projection_shapes()
    templates = {p: fake_quant(torch.randn(s, generator=g) * 0.02, group_size).to(bf16) for p, s in shapes.items()}
    embed = (torch.randn(REAL["vocab_size"], REAL["hidden_size"], generator=g) * 0.02).to(bf16)
    ones = torch.ones(REAL["hidden_size"], dtype=bf16)
    plan = [("model.embed_tokens.weight", tuple(embed.shape), bf16, lambda: embed)]
    for layer in range(REAL["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for proj in QUANTIZED_PROJECTIONS:
            plan.append((f"{p}{proj}.weight", shapes[proj], bf16, lambda t=templates[proj]: t))
        plan.append((f"{p}input_layernorm.weight", tuple(ones.shape), bf16, lambda: ones))
        plan.append((f"{p}post_attention_layernorm.weight", tuple(ones.shape), bf16, lambda: ones))
    plan.append(("model.norm.weight", tuple(ones.shape), bf16, lambda: ones))
    plan.append(("lm_head.weight", tuple(embed.shape), bf16, lambda: embed.flip(0)))
    return plan


def build(directory: Path, formats: list[str], group_size: int) -> None:
    """Write model.safetensors (streamed) and, from its mapped bytes, pytorch_model.bin: one storage per tensor."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from checkpoint_factory import write_safetensors_streaming

    st_dir, bin_dir = directory / "safetensors", directory / "bin"
    st_dir.mkdir(parents=True, exist_ok=True)
    (st_dir / "config.json").write_text(json.dumps(wrong_config(), indent=2))
    t0 = time.perf_counter()
    write_safetensors_streaming(st_dir / "model.safetensors", tensor_plan(group_size))
    _built(st_dir / "model.safetensors", t0)
    if "bin" not in formats:
        return
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(st_dir / "config.json", bin_dir / "config.json")
    t0 = time.perf_counter()
    with open(st_dir / "model.safetensors", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
        header_len = int.from_bytes(mm[:8], "little")
        header = json.loads(mm[8 : 8 + header_len])
        state_dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, entry in header.items():
                begin, end = entry["data_offsets"]
                data = torch.frombuffer(mm, dtype=torch.uint8, count=end - begin, offset=8 + header_len + begin)
                state_dict[name] = data.view(torch.bfloat16).reshape(entry["shape"])
        torch.save(state_dict, bin_dir / "pytorch_model.bin")
        del state_dict, data
    _built(bin_dir / "pytorch_model.bin", t0)


def _built(path: Path, t0: float) -> None:
    print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")


def run_measured(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of a fresh process; its own rusage comes from os.wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[2:]} failed ({proc.returncode}):\n{err.read().decode()}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()  # ru_maxrss is KiB on Linux


def measure(directory: Path, fmt: str, sample_rows: int, cold: bool = False) -> dict:
    if cold:
        evict(list((directory / fmt).iterdir()))  # this checkpoint's files only
    wall, maxrss_mb, out = run_measured([sys.executable, "-c", CHILD, str(directory / fmt), str(sample_rows)])
    result = json.loads(out)
    result.update(format=fmt, wall_s=wall, maxrss_mb=maxrss_mb)
    return result


def import_baseline() -> dict:
    wall, maxrss_mb, _ = run_measured([sys.executable, "-c", IMPORT_ONLY])
    return {"wall_s": wall, "maxrss_mb": maxrss_mb}


def check(result: dict) -> list[str]:
    """What the introspection got wrong about the real shapes (empty when all is right)."""
    d = result["doc"]["derived"]
    problems = [f"{k}: {d[k]} != {v}" for k, v in REAL.items() if d[k] != v]
    if d["ternary"]["status"] != "ternary":
        problems.append(f"ternary status {d['ternary']['status']}")
    if d["tie_word_embeddings"] is not False or d["dtype"] != "bfloat16":
        problems.append(f"tie {d['tie_word_embeddings']} dtype {d['dtype']}")
    return problems


def report(results: list[dict], baseline: dict) -> None:
    base = f"{baseline['wall_s']:.2f} s, {baseline['maxrss_mb']:.0f} MB"
    print(f"\nimport only (python + torch + npuport.weights.introspect): {base}")
    print(
        f"{'format':<12} {'introspect':>10} {'process':>8} {'import':>7} {'peak RSS':>9} {'VmHWM':>7}  target  result"
    )
    for r in results:
        limit_s, limit_mb = TARGETS[r["format"]]
        ok = r["introspect_s"] < limit_s and r["maxrss_mb"] < limit_mb
        print(
            f"{r['format']:<12} {r['introspect_s']:>9.3f}s {r['wall_s']:>7.2f}s {r['import_s']:>6.2f}s "
            f"{r['maxrss_mb']:>6.0f} MB {r['vmhwm_mb']:>4.0f} MB  <{limit_s:g} s, <{limit_mb} MB  "
            + ("met" if ok else "MISSED")
        )
    for r in results:
        d = r["doc"]["derived"]
        t = d["ternary"]
        problems = check(r)
        print(
            f"{r['format']}: {d['tensor_count']} tensors, {d['parameter_count']:,} parameters, "
            f"{d['total_bytes']:,} bytes; "
            f"head_dim from: {r['doc']['sources']['head_dim'][:60]}...; ternary {t['status']} group {t['group_size']} "
            f"({t['tensors_checked']} tensors, {t['values_checked']:,} values sampled); "
            f"mismatches {[m['field'] for m in r['doc']['mismatches']]}; "
            + ("derived fields correct" if not problems else f"WRONG: {problems}")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the checkpoint in DIR and keep it (reused if present)")
    parser.add_argument("--formats", nargs="+", default=["safetensors", "bin"], choices=["safetensors", "bin"])
    parser.add_argument("--sample-rows", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--cold", action="store_true", help="evict the checkpoint files from the page cache first")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # internal: build into DIR and exit
    args = parser.parse_args()
    if args.build:
        build(args.build, args.formats, args.group_size)
        return
    directory = args.keep or Path(tempfile.mkdtemp(prefix="npuport-realshape-"))
    try:
        wanted = [directory / "safetensors" / "model.safetensors"] + (
            [directory / "bin" / "pytorch_model.bin"] if "bin" in args.formats else []
        )
        if not all(p.is_file() for p in wanted):
            command = [sys.executable, __file__, "--build", str(directory), "--group-size", str(args.group_size)]
            subprocess.run([*command, "--formats", *args.formats], check=True)
        baseline = import_baseline()
        results = [measure(directory, fmt, args.sample_rows, args.cold) for fmt in args.formats]
        report(results, baseline)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
