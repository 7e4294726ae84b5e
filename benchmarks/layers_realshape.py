"""Peak memory and time of the `layers` stage's reference side at the real BitCPM4-CANN-1B shape.

    python resources/make_realshape.py /tmp/realshape-src --config correct   # once (3.3 GB, ~1-2 min)
    python -m npuport fuse /tmp/realshape-src /tmp/realshape-model           # once: safetensors as the pipeline has
    python benchmarks/layers_realshape.py [--model DIR] [--prompts 4] [--prompt-tokens 138] [--eval-tokens 256]

The default run's sequences at that shape: ``--prompts`` prompts with their outputs (138 tokens: a 10-token
prompt and 128 generated) and the first ``--eval-tokens`` tokens of the evaluation text (random token ids here).
A first child process stands in for the engine: transformers at bfloat16 writes the layer capture
(``layers-NNN.safetensors``, the files smoke's capture holds). The measured child then runs
``npuport.compare.layers.compare_layers`` on it: the reference at bfloat16 (writing the floor's captures), then
at float32 scoring every point as it streams. Peak RSS is each child's ``ru_maxrss`` (wait4). --model defaults
to the pipeline's fused real-shape model results/realshape-synthetic/model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "results" / "realshape-synthetic" / "model"
MB = 10**6


def run_child(args: list[str], timeout: float) -> dict:
    """``python this_file <args>`` in a fresh process: its JSON result, wall seconds, CPU seconds, peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_path = Path(out.name)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--result", str(result_path)], start_new_session=True)
    try:
        _, status, usage = os.wait4(proc.pid, 0) if timeout is None else _wait(proc, timeout)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        result_path.unlink(missing_ok=True)
    return result | {"process_wall_s": round(time.perf_counter() - start, 1),
                     "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                     "maxrss_mb": round(usage.ru_maxrss * 1024 / MB)}  # fmt: skip


def _wait(proc: subprocess.Popen, timeout: float):
    deadline = time.perf_counter() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, 9)
            os.wait4(proc.pid, 0)
            raise SystemExit(f"timed out after {timeout:.0f} s")
        time.sleep(0.2)


def sequences(vocab: int, *, prompts: int, prompt_tokens: int, eval_tokens: int, seed: int = 0) -> list[dict]:
    """smoke.json's layer sequences at the default run's lengths, random token ids led by bos (1)."""
    rng = random.Random(seed)
    lengths = [(f"prompt {i}", prompt_tokens) for i in range(prompts)] + [("evaluation segment 0", eval_tokens)]
    return [{"source": source, "token_ids": [1] + [rng.randrange(3, vocab) for _ in range(n - 1)]}
            for source, n in lengths if n >= 2]  # fmt: skip


def engine_stand_in(model: str, smoke_path: str, capture: str) -> dict:
    """transformers at bfloat16 writes the layer capture the engine's workers would."""
    from safetensors.torch import save_file

    from npuport.compare.floor import Reference
    from npuport.compare.hf_capture import ReferenceTaps
    from npuport.compare.layer_plan import LAYER_FILE

    smoke = json.loads(Path(smoke_path).read_text(encoding="utf-8"))
    reference = Reference(model, "bfloat16")
    files = []
    for index, sequence in enumerate(smoke["layers"]["sequences"]):
        captured: dict = {}
        with ReferenceTaps(reference.model, lambda p, t, captured=captured: captured.__setitem__(p, t.clone())):
            reference.logits(sequence["token_ids"])
        files.append(LAYER_FILE.format(index=index))
        save_file(captured, str(Path(capture) / files[-1]))
    smoke["layers"]["capture"] = {"files": files}
    Path(smoke_path).write_text(json.dumps(smoke), encoding="utf-8")
    return {"capture_bytes": sum((Path(capture) / f).stat().st_size for f in files), "points": len(captured)}


def measured(model: str, smoke_path: str, capture: str) -> dict:
    """The `layers` stage's library on the stand-in capture."""
    from npuport.compare.layer_plan import LayersSettings
    from npuport.compare.layers import compare_layers

    start = time.perf_counter()
    smoke = json.loads(Path(smoke_path).read_text(encoding="utf-8"))
    document = compare_layers(smoke, model, LayersSettings.from_config({}), capture_dir=capture)
    return {"compare_layers_s": round(time.perf_counter() - start, 1), "status": document["status"],
            "points": len(document["points"]), "tokens": document["tokens"],
            "summary": document["summary"]}  # fmt: skip


def bench(args) -> None:
    model = args.model.resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model}: no model; build one first (see this script's docstring)")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="npuport-layers-bench-"))
    try:
        listed = sequences(config["vocab_size"], prompts=args.prompts, prompt_tokens=args.prompt_tokens,
                           eval_tokens=args.eval_tokens)  # fmt: skip
        smoke = {"status": "ok", "settings": {"engine": {"dtype": "bfloat16"}},
                 "layers": {"status": "captured", "mode": "eager", "sequences": listed}}  # fmt: skip
        (work / "smoke.json").write_text(json.dumps(smoke), encoding="utf-8")
        (work / "capture").mkdir()
        common = [str(model), str(work / "smoke.json"), str(work / "capture")]
        engine = run_child(["_engine", *common, "--threads", str(args.threads)], timeout=args.timeout)
        print(json.dumps({"engine stand-in (transformers bf16 writing the capture)": engine}, indent=1))
        layers = run_child(["_measure", *common, "--threads", str(args.threads)], timeout=args.timeout)
        print(json.dumps({"compare_layers (bf16 pass, then fp32 pass scoring the points)": layers}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_engine", "_measure"):
        child = argparse.ArgumentParser()
        for name in ("mode", "model", "smoke", "capture"):
            child.add_argument(name)
        child.add_argument("--threads", type=int, required=True)
        child.add_argument("--result", required=True)
        a = child.parse_args(argv)
        import torch

        torch.set_num_threads(a.threads)
        result = (engine_stand_in if a.mode == "_engine" else measured)(a.model, a.smoke, a.capture)
        Path(a.result).write_text(json.dumps(result), encoding="utf-8")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=138)
    p.add_argument("--eval-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    bench(p.parse_args(argv))


if __name__ == "__main__":
    main()
