"""Performance at the real BitCPM4-CANN-1B scale: fuse vs a file copy, CPU decode vs the memory bound, vLLM CPU.

    python resources/make_realshape.py                   # once: results/realshape-synthetic-src/ (3.2 GB .bin)
    python benchmarks/realshape.py fuse [--src DIR] [--max-shard-size BYTES] [--cold] [--threads N] [--profile]
    python benchmarks/realshape.py bandwidth [--threads 2]
    python benchmarks/realshape.py baseline [--model DIR] [--dtype float32 bfloat16] [--max-tokens 32] [--prompts 2]
    python benchmarks/realshape.py engine [--model DIR] [--max-tokens 32] [--prompts 2] [--gpu-memory-utilization 0.3]

fuse: introspects and repairs the source (not timed), then times, each in a fresh process, two plain copies
of the source weight file (shutil.copyfile, as `cp`; and a 16 MiB read/write loop), `npuport.weights.fuse.fuse` on the
source, and a third copy; the page cache holds the source for all of them (read once first; --cold: evicted
before each instead) and dirty pages are synced between them. The ratio uses the median copy.
Targets: fuse bytes/s >= 0.5 x copy bytes/s; peak RSS <= max_shard_size + 2 x largest tensor + 500 MB.
baseline: measures the memory copy bandwidth (torch, same threads) and then greedy decoding with
`npuport.engines.baseline.run_baseline`; the bound is copy bandwidth / weight bytes read per token (every tensor but
the embedding table, in the run's dtype, plus one embedding row). engine: `npuport.engines.smoke.run_smoke` (vLLM,
serve check off) with the settings of config/models/realshape-synthetic.yaml.
--model defaults to the pipeline's fused model results/realshape-synthetic/model
(`snakemake --cores 2 results/realshape-synthetic/model --configfile config/models/realshape-synthetic.yaml`).
Every measured process gets a timeout; peak RSS is the child's ru_maxrss (wait4) and, for process trees
(vLLM), the sampled sum over the tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from page_cache import evict  # benchmarks/, beside this script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT / "results" / "realshape-synthetic-src"
DEFAULT_MODEL = ROOT / "results" / "realshape-synthetic" / "model"
MB = 10**6
GB = 10**9
REFERENCE_CPU = "reference report: 48 tokens in 50.7 s = 0.95 tok/s (transformers, 40-core ARM CPU)"


# ---------------------------------------------------------------- measuring processes (parent side, no torch)


def run_child(args: list[str], timeout: float) -> dict:
    """Run `python this_file _child ...` in its own session; its JSON result plus wall s, ru_maxrss and tree peak."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_path = Path(out.name)
    argv = [sys.executable, __file__, *args, "--result", str(result_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, start_new_session=True)
    tree_peak, status, usage = 0, None, None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                raise SystemExit(f"timed out after {timeout:.0f} s: {' '.join(args)}")
            tree_peak = max(tree_peak, _tree_rss(psutil, proc.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        result_path.unlink(missing_ok=True)
    cpu = usage.ru_utime + usage.ru_stime  # the child's own CPU seconds (user + system), its imports included
    return result | {"process_wall_s": wall, "cpu_s": cpu, "maxrss_mb": usage.ru_maxrss * 1024 / MB,
                     "tree_peak_mb": tree_peak / MB}  # fmt: skip


def _tree_rss(psutil, pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def read_through(path: Path) -> None:
    """Bring ``path`` into the page cache (the copy and the fuse then read it at the same speed)."""
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(16 << 20)
        while f.readinto(buffer):
            pass


def weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".bin", ".safetensors"))


# ---------------------------------------------------------------- fuse


def bench_fuse(args) -> None:
    src = args.src.resolve()
    if not src.is_dir():
        raise SystemExit(f"{src}: not found; run `python resources/make_realshape.py` first")
    work = Path(tempfile.mkdtemp(prefix="npuport-fuse-bench-", dir=args.work_dir))
    try:
        run_child(["_prepare", str(src), str(work)], timeout=300)
        sources = weight_files(src)
        source_bytes = sum(p.stat().st_size for p in sources)
        for path in sources:
            read_through(path)
        os.sync()
        copies = [copy_once(sources, work, args.copy_timeout, args.cold) for _ in range(2)]
        fuse_args = ["_fuse", str(src), str(work), str(args.max_shard_size), str(args.threads)]
        if args.cold:
            evict(sources)
        fused = run_child(fuse_args + (["--profile"] if args.profile else []), timeout=args.fuse_timeout)
        if args.keep:
            if args.keep.exists():
                shutil.rmtree(args.keep)
            shutil.move(str(work / "model"), args.keep)
        shutil.rmtree(work / "model", ignore_errors=True)
        os.sync()
        copies.append(copy_once(sources, work, args.copy_timeout, args.cold))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_fuse(src, source_bytes, copies, fused, args.max_shard_size)


def copy_once(sources: list[Path], work: Path, timeout: float, cold: bool = False) -> dict:
    """Copy the source weight files into ``work`` in a fresh process (cp's way, then a read/write loop)."""
    if cold:
        evict(sources)
    result = run_child(["_copy", str(work), *map(str, sources), *(["--cold"] if cold else [])], timeout=timeout)
    os.sync()
    return result


def report_fuse(src: Path, source_bytes: int, copies: list[dict], fused: dict, max_shard: int) -> None:
    copy_rate = statistics.median(source_bytes / c["copyfile_s"] for c in copies)
    rw_rate = statistics.median(source_bytes / c["readwrite_s"] for c in copies)
    fuse_rate = fused["total_bytes"] / fused["fuse_s"]
    rss_target = (max_shard + 2 * fused["largest_tensor_bytes"]) / MB + 500
    print(f"\nsource: {src} ({source_bytes / GB:.3f} GB, {fused['source_format']}); {fused['decision']}")
    print(f"fused: {fused['total_bytes'] / GB:.3f} GB in {len(fused['shards'])} shard(s) of <= {max_shard / GB:g} GB; "
          f"{fused['tensors']} tensors, {fused['tensors_quantized']} quantized, "
          f"{fused['linears_ternary']}/{fused['linears_checked']} linears verified ternary")  # fmt: skip
    for i, c in enumerate(copies, 1):
        cp_s, rw_s = c["copyfile_s"], c["readwrite_s"]
        print(f"copy {i}: shutil.copyfile {cp_s:.2f} s ({source_bytes / cp_s / MB:.0f} MB/s), "
              f"read/write loop {rw_s:.2f} s ({source_bytes / rw_s / MB:.0f} MB/s)")  # fmt: skip
    print(f"fuse: {fused['fuse_s']:.2f} s in fuse() ({fuse_rate / MB:.0f} MB/s), process "
          f"{fused['process_wall_s']:.2f} s (import {fused['import_s']:.2f} s), process CPU {fused['cpu_s']:.1f} s, "
          f"{fused['threads']} torch thread(s); "
          "introspection and repair not included")  # fmt: skip
    ratio = fuse_rate / copy_rate
    print(
        f"fuse / copy speed (median of {len(copies)} copies): {ratio:.2f} (read/write loop: {fuse_rate / rw_rate:.2f});"
        " target >= 0.5: " + ("met" if ratio >= 0.5 else "MISSED")
    )
    print(f"fuse peak RSS: {fused['maxrss_mb']:.0f} MB (import alone {fused['import_rss_mb']:.0f} MB); target <= "
          f"{max_shard / MB:.0f} + 2 x {fused['largest_tensor_bytes'] / MB:.0f} + 500 = {rss_target:.0f} MB: "
          + ("met" if fused["maxrss_mb"] <= rss_target else "MISSED"))  # fmt: skip
    if fused.get("profile"):
        print("\nfuse profile (top functions by own time):\n" + fused["profile"])


def child_prepare(src: str, work: str) -> dict:
    from npuport.core.atomic import write_json
    from npuport.weights.introspect import introspect_checkpoint
    from npuport.weights.repair_config import repair

    t0 = time.perf_counter()
    introspection = introspect_checkpoint(src)
    config, _ = repair(Path(src) / "config.json", introspection)
    write_json(Path(work) / "introspect.json", introspection)
    write_json(Path(work) / "config.json", config)
    return {"seconds": time.perf_counter() - t0}


def child_copy(work: str, *sources: str, cold: bool = False) -> dict:
    """Seconds for shutil.copyfile of every source and for a 16 MiB read/write loop over the same bytes."""
    t0 = time.perf_counter()
    for s in sources:
        shutil.copyfile(s, Path(work) / f"copy-{Path(s).name}")
    t1 = time.perf_counter()
    for s in sources:
        (Path(work) / f"copy-{Path(s).name}").unlink()
    os.sync()
    if cold:
        evict([Path(s) for s in sources])
    t2 = time.perf_counter()
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    for s in sources:
        with open(s, "rb", buffering=0) as fin, open(Path(work) / f"rw-{Path(s).name}", "wb", buffering=0) as fout:
            while n := fin.readinto(buffer):
                fout.write(view[:n])
    t3 = time.perf_counter()
    for s in sources:
        (Path(work) / f"rw-{Path(s).name}").unlink()
    return {"copyfile_s": t1 - t0, "readwrite_s": t3 - t2}


def child_fuse(src: str, work: str, max_shard: str, threads: str, profile: bool = False) -> dict:
    t0 = time.perf_counter()
    import torch  # timed with the import, not with fuse()

    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    from npuport.core.atomic import read_json
    from npuport.weights.fuse import fuse

    import_rss = _vmhwm_mb()
    t1 = time.perf_counter()
    call = (read_json(Path(work) / "config.json"), read_json(Path(work) / "introspect.json"), Path(work) / "model")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    doc = fuse(src, *call, max_shard_size=int(max_shard))
    t2 = time.perf_counter()
    out = {key: doc[key] for key in ("total_bytes", "shards", "decision", "source_format", "tensors_quantized",
                                     "linears_checked", "linears_ternary")}  # fmt: skip
    out |= {"import_s": t1 - t0, "fuse_s": t2 - t1, "import_rss_mb": import_rss, "tensors": len(doc["tensors"]),
            "threads": torch.get_num_threads(),
            "largest_tensor_bytes": max(r["bytes"] for r in doc["tensors"])}  # fmt: skip
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        out["profile"] = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    return out


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 / MB for line in f if line.startswith("VmHWM:"))


# ---------------------------------------------------------------- memory bandwidth and the decode bound


def copy_bandwidth(threads: int, size: int = 1 << 30, repeats: int = 5) -> dict:
    """Best-of-``repeats`` bytes/s of torch copying ``size`` bytes (read once, written once), and of summing them."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(size // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of the pages is not a bandwidth
    copy_s, read_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        t1 = time.perf_counter()
        float(src.sum())
        t2 = time.perf_counter()
        copy_s.append(t1 - t0)
        read_s.append(t2 - t1)
    return {"threads": threads, "bytes": size, "copy_bytes_per_s": size / min(copy_s),
            "read_bytes_per_s": size / min(read_s), "method": f"torch float32 copy_ and sum of {size >> 20} MiB, "
            f"best of {repeats}, {threads} threads"}  # fmt: skip


def bytes_per_token(model_dir: Path, dtype_bytes: int | None) -> dict:
    """Weight bytes one decode step reads: every tensor but the input embedding table, plus one of its rows."""
    from npuport.weights.checkpoint import Checkpoint

    with Checkpoint.open(model_dir) as ckpt:
        infos = list(ckpt.tensors.values())
    total = embed = row = 0
    for info in infos:
        numel = info.nbytes // _itemsize(info.dtype)
        size = numel * (dtype_bytes or _itemsize(info.dtype))
        total += size
        if info.name.endswith("embed_tokens.weight"):
            embed, row = size, size // info.shape[0]
    return {"bytes_per_token": total - embed + row, "weights_bytes": total, "embedding_bytes": embed}


def _itemsize(dtype: str) -> int:
    import torch

    return getattr(torch, dtype).itemsize


def child_bandwidth(threads: int) -> dict:
    return copy_bandwidth(threads)


def bench_bandwidth(args) -> None:
    bw = run_child(["_bandwidth", str(args.threads)], timeout=300)
    print(f"memory copy bandwidth: {bw['copy_bytes_per_s'] / GB:.2f} GB/s, read (sum) {bw['read_bytes_per_s'] / GB:.2f}"
          f" GB/s ({bw['method']})")  # fmt: skip


# ---------------------------------------------------------------- transformers baseline


def generation_settings(max_tokens: int, prompts: int):
    import yaml

    from npuport.core.settings import GenerationSettings

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    return GenerationSettings.from_config(
        {"max_tokens": max_tokens, "prompts": config["generation"]["prompts"][:prompts]}
    )


def summarize(doc: dict) -> dict:
    """The numbers of a smoke/baseline document this benchmark reports."""
    if doc["status"] != "ok":
        return {"status": doc["status"], "reason": doc["reason"]}
    records = doc["prompts"]
    tpots = [r["tpot_s"] for r in records if r["tpot_s"]]
    return {
        "status": "ok",
        "device": doc["platform"].get("device"),
        "load_s": doc["load_seconds"],
        "ttft_s": statistics.median(r["ttft_s"] for r in records),
        "tpot_s": statistics.median(tpots) if tpots else None,
        "tokens": [r["num_tokens"] for r in records],
        "single_tokens_per_s": doc["throughput"]["single"]["tokens_per_s"],
        "batch_tokens_per_s": (doc["throughput"].get("batch") or {}).get("tokens_per_s"),
        "kv_cache": doc.get("kv_cache"),
    }


def child_baseline(model: str, dtype: str, max_tokens: str, prompts: str, threads: str) -> dict:
    import torch

    from npuport.engines.baseline import run_baseline

    bandwidth = copy_bandwidth(int(threads))
    torch.set_num_threads(int(threads))
    from npuport.core.settings import BaselineSettings, schema_defaults

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    doc = run_baseline(model, baseline=BaselineSettings.from_config({"dtype": dtype}),
                       generation=generation_settings(int(max_tokens), int(prompts)),
                       max_model_len=schema_defaults("engine")["max_model_len"])  # fmt: skip
    return {"bandwidth": bandwidth, "dtype": dtype, **bytes_per_token(Path(model), getattr(torch, dtype).itemsize),
            **summarize(doc)}  # fmt: skip


def bench_baseline(args) -> None:
    model = _model_dir(args.model)
    results = []
    for dtype in args.dtype:
        argv = ["_baseline", str(model), dtype, str(args.max_tokens), str(args.prompts), str(args.threads)]
        results.append(run_child(argv, timeout=args.timeout))
    print(f"\nmodel: {model}; {args.prompts} prompt(s), max_tokens {args.max_tokens}, {args.threads} threads")
    for r in results:
        if r["status"] != "ok":
            print(f"transformers {r['dtype']}: {r['status']}: {r['reason']}")
            continue
        bound = r["bandwidth"]["copy_bytes_per_s"] / r["bytes_per_token"]
        decode = 1 / r["tpot_s"]
        print(f"transformers {r['dtype']} on {r['device']}: load {r['load_s']:.1f} s, "
              f"TTFT {r['ttft_s'] * 1000:.0f} ms, "
              f"TPOT {r['tpot_s'] * 1000:.0f} ms = {decode:.2f} tok/s decode, {r['single_tokens_per_s']:.2f} tok/s "
              f"incl. prefill; tokens {r['tokens']}; peak RSS {r['maxrss_mb']:.0f} MB")  # fmt: skip
        print(f"  bound: {r['bytes_per_token'] / GB:.2f} GB/token / {r['bandwidth']['copy_bytes_per_s'] / GB:.2f} GB/s "
              f"copy = {bound:.2f} tok/s (read bandwidth {r['bandwidth']['read_bytes_per_s'] / GB:.2f} GB/s -> "
              f"{r['bandwidth']['read_bytes_per_s'] / r['bytes_per_token']:.2f} tok/s); "
              f"measured decode / bound = {decode / bound:.2f}")  # fmt: skip
    print(REFERENCE_CPU)


def _model_dir(model: Path) -> Path:
    if not (model / "config.json").is_file():
        raise SystemExit(
            f"{model}: no fused model; run `snakemake --cores 2 results/realshape-synthetic/model --configfile "
            "config/models/realshape-synthetic.yaml` (or `realshape.py fuse --keep DIR`)"
        )
    return model.resolve()


# ---------------------------------------------------------------- vLLM engine


def child_engine(model: str, max_tokens: str, prompts: str, util: str, max_model_len: str, threads: str) -> dict:
    from npuport.engines.smoke import run_smoke

    engine = {"dtype": "bfloat16", "max_model_len": int(max_model_len), "gpu_memory_utilization": float(util),
              "enforce_eager": True, "max_num_seqs": 4}  # fmt: skip
    bandwidth = copy_bandwidth(int(threads))
    from npuport.core.settings import EngineSettings, ServeSettings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    doc = run_smoke(model, engine=EngineSettings.from_config(engine),
                    generation=generation_settings(int(max_tokens), int(prompts)),
                    serve=ServeSettings.from_config({"enabled": False}))  # fmt: skip
    return {"bandwidth": bandwidth, "engine": engine, "version": doc["engine"].get("version"),
            **bytes_per_token(Path(model), 2), **summarize(doc)}  # fmt: skip


def bench_engine(args) -> None:
    model = _model_dir(args.model)
    argv = ["_engine", str(model), str(args.max_tokens), str(args.prompts), str(args.gpu_memory_utilization),
            str(args.max_model_len), str(args.threads)]  # fmt: skip
    r = run_child(argv, timeout=args.timeout)
    print(f"\nmodel: {model}; {args.prompts} prompt(s), max_tokens {args.max_tokens}; engine {r.get('engine')}")
    if r["status"] != "ok":
        print(f"vLLM: {r['status']}: {r['reason']}")
        return
    bound = r["bandwidth"]["copy_bytes_per_s"] / r["bytes_per_token"]
    decode = 1 / r["tpot_s"]
    batch = r["batch_tokens_per_s"]
    print(f"vLLM {r['version']} on {r['device']}: start {r['load_s']:.1f} s, TTFT {r['ttft_s'] * 1000:.0f} ms, "
          f"TPOT {r['tpot_s'] * 1000:.0f} ms = {decode:.2f} tok/s decode, {r['single_tokens_per_s']:.2f} tok/s single "
          f"request, {batch:.2f} tok/s batch of {args.prompts}; tokens {r['tokens']}")  # fmt: skip
    print(f"  bound (bf16): {r['bytes_per_token'] / GB:.2f} GB/token / {r['bandwidth']['copy_bytes_per_s'] / GB:.2f} "
          f"GB/s = {bound:.2f} tok/s; measured decode / bound = {decode / bound:.2f}")  # fmt: skip
    print(f"  process wall {r['process_wall_s']:.1f} s; peak RSS (process tree, sampled) {r['tree_peak_mb']:.0f} MB; "
          f"KV cache {r['kv_cache'].get('tokens')} tokens, {r['kv_cache'].get('gib')} GiB")  # fmt: skip


# ---------------------------------------------------------------- command line

CHILDREN = {
    "_prepare": child_prepare,
    "_copy": child_copy,
    "_fuse": child_fuse,
    "_bandwidth": lambda threads: child_bandwidth(int(threads)),
    "_baseline": child_baseline,
    "_engine": child_engine,
}


def run_as_child(argv: list[str]) -> None:
    name, *args, flag, result = argv  # run_child puts --result PATH last
    assert flag == "--result", argv
    flags = {flag[2:]: True for flag in ("--profile", "--cold") if flag in args}
    args = [a for a in args if a not in ("--profile", "--cold")]
    Path(result).write_text(json.dumps(CHILDREN[name](*args, **flags)), encoding="utf-8")


def parser() -> argparse.ArgumentParser:
    from_model = {"type": Path, "default": DEFAULT_MODEL, "help": f"fused model directory ({DEFAULT_MODEL})"}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuse", help="fuse bytes/s against a file copy, and peak RSS")
    f.add_argument("--src", type=Path, default=DEFAULT_SRC, help=f"source checkpoint ({DEFAULT_SRC})")
    f.add_argument("--max-shard-size", type=int, default=2 * GB, help="bytes (2e9, the pipeline default)")
    f.add_argument("--work-dir", type=Path, default=ROOT / "results", help="where the temp copies go (same disk)")
    f.add_argument("--keep", type=Path, help="keep the fused model directory here")
    f.add_argument("--profile", action="store_true", help="cProfile the fuse call and print the top functions")
    f.add_argument("--threads", type=int, default=0, help="torch threads in the fuse process (0: torch's default)")
    f.add_argument("--cold", action="store_true", help="evict the source from the page cache before each run")
    f.add_argument("--copy-timeout", type=float, default=300)
    f.add_argument("--fuse-timeout", type=float, default=900)
    b = sub.add_parser("bandwidth", help="memory copy and read bandwidth")
    b.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("baseline", help="transformers CPU decode against the memory-bandwidth bound")
    t.add_argument("--model", **from_model)
    t.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    t.add_argument("--max-tokens", type=int, default=32)
    t.add_argument("--prompts", type=int, default=2, help="how many of the reference prompts (1-4)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--timeout", type=float, default=900)
    e = sub.add_parser("engine", help="vLLM CPU start, TTFT, TPOT, tokens/s")
    e.add_argument("--model", **from_model)
    e.add_argument("--max-tokens", type=int, default=32)
    e.add_argument("--prompts", type=int, default=2)
    e.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="share of host RAM (CPU backend)")
    e.add_argument("--max-model-len", type=int, default=2048)
    e.add_argument("--threads", type=int, default=2, help="threads of the bandwidth measurement")
    e.add_argument("--timeout", type=float, default=900)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILDREN:
        run_as_child(argv)
        return
    args = parser().parse_args(argv)
    {"fuse": bench_fuse, "bandwidth": bench_bandwidth, "baseline": bench_baseline, "engine": bench_engine}[
        args.command
    ](args)


if __name__ == "__main__":  # vLLM spawns its engine processes, which re-import this file
    main()
