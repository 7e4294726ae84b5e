"""The report's figures (matplotlib, Agg backend): PNG files that the Markdown report links to."""

# Labels are English and prompts are numbered ("prompt 1"): the default fonts have no CJK glyphs, and the
# report's tables map each number to its prompt. A figure whose data was not measured is not drawn.

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot is imported

from npuport.report.artifacts import Artifacts, dig  # noqa: E402

LOGPROB_DIFF = "logprob_diff.png"
SPEED = "speed.png"
KLD_CDF = "kld_cdf.png"
KLD_BUCKETS = "kld_buckets.png"
LAYERS_REL_L2 = "layers_rel_l2.png"
BENCH_THROUGHPUT = "bench_throughput.png"
BENCH_LATENCY = "bench_latency.png"
SIDE_COLORS = {"engine": "tab:blue", "floor": "tab:orange"}
_DPI = 110


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    # Fixed metadata: the same data gives the same bytes, so Snakemake and reviewers see no spurious change.
    figure.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def logprob_diff_plot(compare: dict, path: Path, limit: float | None = None) -> Path | None:
    """|engine logprob - reference logprob| per generated position (teacher-forced), one line per prompt."""
    series = [
        (i, (p.get("teacher_forced") or {}).get("abs_logprob_diff_per_position") or [])
        for i, p in enumerate(compare.get("prompts") or [], start=1)
    ]
    series = [(i, values) for i, values in series if values]
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 3.8))
    for index, values in series:
        axes.plot(range(len(values)), values, marker=".", markersize=3, linewidth=1, label=f"prompt {index}")
    if limit is not None:
        axes.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"max_abs_logprob_diff {limit:g}")
    axes.set_xlabel("generated token position")
    axes.set_ylabel("max |logprob diff| over engine top-k")
    axes.set_title("Teacher-forced logprob difference, engine vs reference")
    if max(max(values) for _, values in series) > 0:
        axes.set_yscale("symlog", linthresh=1e-3)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _speed_values(document: dict) -> dict[str, float | None]:
    prompts = [p for p in document.get("prompts") or [] if isinstance(p, dict)]

    def mean(key):
        values = [p[key] for p in prompts if isinstance(p.get(key), int | float)]
        return sum(values) / len(values) if values else None

    throughput = document.get("throughput") or {}
    return {
        "tokens/s single": (throughput.get("single") or {}).get("tokens_per_s"),
        "tokens/s batch": (throughput.get("batch") or {}).get("tokens_per_s"),
        "TTFT ms": None if mean("ttft_s") is None else mean("ttft_s") * 1000,
        "TPOT ms": None if mean("tpot_s") is None else mean("tpot_s") * 1000,
    }


def _label(value: float | None) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def speed_plot(smoke: dict, baseline: dict, path: Path) -> Path | None:
    """Throughput and latency of the engine beside the baseline (a missing value leaves its bar out)."""
    sides = {"engine (smoke)": _speed_values(smoke), "reference (baseline)": _speed_values(baseline)}
    metrics = ["tokens/s single", "tokens/s batch", "TTFT ms", "TPOT ms"]
    if not any(v is not None for values in sides.values() for v in values.values()):
        return None
    figure, panels = plt.subplots(1, len(metrics), figsize=(10, 3.4))
    colors = {"engine (smoke)": "tab:blue", "reference (baseline)": "tab:gray"}
    for axes, metric in zip(panels, metrics, strict=True):
        names = list(sides)
        values = [sides[name][metric] for name in names]
        bars = axes.bar(range(len(names)), [v or 0 for v in values], color=[colors[n] for n in names])
        axes.bar_label(bars, labels=[_label(v) for v in values], fontsize=8)
        axes.set_xticks(range(len(names)), [n.split(" ")[0] for n in names], fontsize=8)
        axes.set_title(metric, fontsize=9)
        axes.margins(y=0.2)
    figure.suptitle("Engine vs reference: throughput (higher is better) and latency (lower is better)", fontsize=10)
    return _save(figure, path)


def _positive(quantiles: list) -> tuple[list[float], list[float]]:
    """The CDF points (KLD, fraction of positions at or below it) whose KLD is above 0: a KLD of 0 or below
    (rounding, where both sides agree) has no place on a log axis; the curve starts at the fraction they hold."""
    values = quantiles if isinstance(quantiles, list) else []
    numbers = [q for q in values if isinstance(q, int | float) and not isinstance(q, bool)]
    if len(numbers) < 2:
        return [], []
    fractions = [i / (len(numbers) - 1) for i in range(len(numbers))]
    kept = [(q, p) for q, p in zip(numbers, fractions, strict=True) if q > 0]
    return [q for q, _ in kept], [p for _, p in kept]


def kld_cdf_plot(evaluation: dict, path: Path) -> Path | None:
    """The per-position KLD distribution of the engine and of the noise floor as CDFs on a log axis
    (compare.json: evaluation.kld_quantiles, 0 % to 100 %), with each side's mean KLD as a dashed line."""
    curves = {side: _positive(dig(evaluation, "kld_quantiles", side, default=[])) for side in SIDE_COLORS}
    if not any(values for values, _ in curves.values()):
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.0))
    # The floor first, wide and light, the engine over it: where the two agree both stay visible.
    styles = {"floor": {"linewidth": 3.0, "alpha": 0.55}, "engine": {"linewidth": 1.3, "alpha": 1.0}}
    for side in ("floor", "engine"):
        values, fractions = curves[side]
        if not values:
            continue
        mean = dig(evaluation, side, "kld", "mean")
        number = isinstance(mean, int | float) and not isinstance(mean, bool)
        shown = f"{side} (mean {mean:.2e})" if number else side
        axes.step(values, fractions, where="post", color=SIDE_COLORS[side], label=shown, **styles[side])
        if number and mean > 0:
            axes.axvline(mean, color=SIDE_COLORS[side], linestyle="--", linewidth=1)
    start = min(fractions[0] for values, fractions in curves.values() if values)
    if start > 0:
        note = f"curves start at the first KLD > 0; below {start:.0%}: KLD <= 0 (rounding)"
        axes.annotate(note, (0.01, 0.02), xycoords="axes fraction", fontsize=7, color="dimgray")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("KLD per position (full vocabulary, vs the full-precision reference), log scale")
    axes.set_ylabel("fraction of positions with KLD <= x")
    positions = dig(evaluation, "engine", "n")
    on = f" ({positions:,} positions)" if isinstance(positions, int) else ""
    axes.set_title(f"KLD distribution on the evaluation text{on}: engine vs noise floor", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right", title="dashed: mean KLD", title_fontsize=7)
    return _save(figure, path)


def kld_buckets_plot(evaluation: dict, path: Path) -> Path | None:
    """Mean KLD (± one standard error) before and from the RoPE switch on, engine beside the noise floor."""
    switch = dig(evaluation, "rope_switch", "position")
    names = [name for name in ("before", "after") if isinstance(dig(evaluation, "buckets", name), dict)]
    if switch is None or not names:
        return None
    figure, axes = plt.subplots(figsize=(6.5, 3.8))
    width = 0.38
    for offset, side in zip((-width / 2, width / 2), SIDE_COLORS, strict=True):
        means = [dig(evaluation, "buckets", name, side, "kld", "mean") for name in names]
        errors = [dig(evaluation, "buckets", name, side, "kld", "se", default=0) for name in names]
        xs = [i + offset for i in range(len(names))]
        bars = axes.bar(xs, [m or 0 for m in means], width, yerr=errors, capsize=3, color=SIDE_COLORS[side], label=side)
        axes.bar_label(bars, labels=[_scientific(m) for m in means], fontsize=8, padding=2)
    ticks = []
    for name in names:
        positions = dig(evaluation, "buckets", name, "engine", "n")
        scored = f"\n({positions:,} positions)" if isinstance(positions, int) else ""
        ticks.append(f"{'before' if name == 'before' else 'from'} position {switch}{scored}")
    axes.set_xticks(range(len(names)), ticks, fontsize=9)
    axes.set_ylabel("mean KLD per position")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes.set_title(f"Mean KLD around the RoPE switch at position {switch}: engine vs noise floor", fontsize=10)
    axes.margins(y=0.2)
    axes.legend(fontsize=8, title="error bars: ± 1 standard error", title_fontsize=7)
    return _save(figure, path)


def _scientific(value) -> str:
    return "not measured" if not isinstance(value, int | float) else f"{value:.3g}" if value >= 0.01 else f"{value:.2e}"


def _positive_number(value) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def layers_plot(layers: dict, path: Path) -> Path | None:
    """Relative L2 error per capture point in depth order (log y), engine and noise floor, with the gate's limit
    (ratio x floor + epsilon) and the first point outside it marked (layers.json: points, gate, first_divergent)."""
    points = [p for p in layers.get("points") or [] if isinstance(p, dict)]
    if not points:
        return None
    xs = range(len(points))
    figure, axes = plt.subplots(figsize=(max(7.5, 0.32 * len(points) + 3), 4.2))
    for side, color in SIDE_COLORS.items():
        ys = [_positive_number(dig(p, side, "rel_l2")) for p in points]
        axes.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", markersize=3, color=color,
                  linewidth=1.2, label=f"{side} rel L2")  # fmt: skip
    limits = [_positive_number(p.get("limit_rel_l2")) for p in points]
    gate = layers.get("gate") or {}
    axes.plot(xs, [y if y is not None else float("nan") for y in limits], color="red", linestyle="--", linewidth=1,
              label=f"gate: {gate.get('ratio', '?')} x floor + {gate.get('epsilon', '?')}")  # fmt: skip
    divergent = layers.get("first_divergent")
    names = [str(p.get("point")) for p in points]
    if isinstance(divergent, dict) and divergent.get("point") in names:
        index = names.index(divergent["point"])
        value = _positive_number(dig(points[index], "engine", "rel_l2"))
        axes.axvline(index, color="red", alpha=0.4, linewidth=6)
        if value is not None:
            axes.annotate(f"first divergent: {divergent['point']}", (index, value), xytext=(5, 8),
                          textcoords="offset points", fontsize=8, color="red")  # fmt: skip
    if any(_positive_number(dig(p, side, "rel_l2")) for p in points for side in SIDE_COLORS):
        axes.set_yscale("log")
    axes.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("relative L2 error vs reference (log)")
    axes.set_title("Layer-by-layer relative L2 error: engine vs noise floor", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _bench_series(bench: dict) -> dict[str, list[dict]]:
    """The ladder's measured points, one series per (input length, output length), concurrency ascending."""
    series: dict[str, list[dict]] = {}
    for p in bench.get("points") or []:
        if isinstance(p, dict) and _positive_number(p.get("output_throughput")):
            series.setdefault(f"in {p.get('input_len')} / out {p.get('output_len')}", []).append(p)
    return {name: sorted(points, key=lambda p: p.get("concurrency") or 0) for name, points in series.items()}


def _bench_device(bench: dict) -> str:
    return str(dig(bench, "platform", "device", default="device not recorded"))


def bench_throughput_plot(bench: dict, path: Path) -> Path | None:
    """Output token throughput against concurrency (log2 x), one line per input / output length (bench.json)."""
    series = _bench_series(bench)
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.0, 3.8))
    for name, points in series.items():
        xs = [p["concurrency"] for p in points]
        axes.plot(xs, [p["output_throughput"] for p in points], marker="o", linewidth=1.3, label=name)
    axes.set_xscale("log", base=2)
    concurrencies = sorted({p["concurrency"] for points in series.values() for p in points})
    axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
    axes.set_xlabel("concurrency (requests in flight)")
    axes.set_ylabel("output tokens/s")
    axes.set_title(f"Throughput under load, vllm bench serve ({_bench_device(bench)})", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, title="tokens", title_fontsize=7)
    return _save(figure, path)


def bench_latency_plot(bench: dict, path: Path) -> Path | None:
    """Median TPOT against output throughput, each point labelled with its concurrency: the trade-off curve of
    vLLM's benchmarks/sweep Pareto plot (down and to the right is better)."""
    series = {name: [p for p in points if _positive_number(dig(p, "tpot_ms", "median"))]
              for name, points in _bench_series(bench).items()}  # fmt: skip
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.0, 3.8))
    for name, points in series.items():
        xs = [p["output_throughput"] for p in points]
        ys = [p["tpot_ms"]["median"] for p in points]
        axes.plot(xs, ys, marker="o", linewidth=1.3, label=name)
        for x, y, p in zip(xs, ys, points, strict=True):
            axes.annotate(f"c={p['concurrency']}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    axes.set_xlabel("output tokens/s (all requests)")
    axes.set_ylabel("median TPOT, ms per token per request")
    axes.set_title(f"Latency against throughput, vllm bench serve ({_bench_device(bench)})", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, title="tokens", title_fontsize=7)
    return _save(figure, path)


def draw(artifacts: Artifacts, plots_dir: Path) -> dict[str, str]:
    """Draw every plot whose data was measured into ``plots_dir``; plot name -> file name."""
    drawn = {}
    compare = artifacts.compare
    checks = compare.records("checks")
    limit = next((c.get("limit") for c in checks if c.get("threshold") == "max_abs_logprob_diff"), None)
    if logprob_diff_plot(dict(compare.data), plots_dir / LOGPROB_DIFF, limit):
        drawn["logprob_diff"] = LOGPROB_DIFF
    if speed_plot(dict(artifacts.smoke.data), dict(artifacts.baseline.data), plots_dir / SPEED):
        drawn["speed"] = SPEED
    evaluation = dict(compare.part("evaluation").data)
    if evaluation.get("status") == "measured":
        if kld_cdf_plot(evaluation, plots_dir / KLD_CDF):
            drawn["kld_cdf"] = KLD_CDF
        if kld_buckets_plot(evaluation, plots_dir / KLD_BUCKETS):
            drawn["kld_buckets"] = KLD_BUCKETS
    if layers_plot(dict(artifacts.layers.data), plots_dir / LAYERS_REL_L2):
        drawn["layers_rel_l2"] = LAYERS_REL_L2
    bench = dict(artifacts.bench.data)
    if bench_throughput_plot(bench, plots_dir / BENCH_THROUGHPUT):
        drawn["bench_throughput"] = BENCH_THROUGHPUT
    if bench_latency_plot(bench, plots_dir / BENCH_LATENCY):
        drawn["bench_latency"] = BENCH_LATENCY
    return drawn
