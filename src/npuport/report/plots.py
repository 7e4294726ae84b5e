"""The report's figures (matplotlib, Agg backend): PNG files that the Markdown report links to."""

# Labels are English and prompts are numbered ("prompt 1"): the default fonts have no CJK glyphs, and the
# report's tables map each number to its prompt. A figure whose data was not measured is not drawn. A figure whose
# data and drawing code are those of the file already in the plots directory is kept, not drawn again: each PNG
# carries the digest of what it was drawn from (a text chunk, DATA_KEY).

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot is imported
from matplotlib.ticker import FuncFormatter  # noqa: E402

from npuport.report.artifacts import Artifacts, dig  # noqa: E402

LOGPROB_DIFF = "logprob_diff.png"
SPEED = "speed.png"
KLD_CDF = "kld_cdf.png"
KLD_BUCKETS = "kld_buckets.png"
LAYERS_REL_L2 = "layers_rel_l2.png"
BENCH_THROUGHPUT = "bench_throughput.png"
BENCH_LATENCY = "bench_latency.png"
BENCH_CAPACITY = "bench_capacity.png"
SIDE_COLORS = {"engine": "tab:blue", "floor": "tab:orange"}
_DPI = 110
# The PNG text chunk holding the digest of the data and code a figure was drawn from.
DATA_KEY = "npuport-data"
# A previous figure larger than this is not opened to read its digest (it is drawn again).
_MAX_PREVIOUS_BYTES = 16 << 20
_drawing_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("npuport_plot_key", default=None)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    # Fixed metadata: the same data gives the same bytes, so Snakemake and reviewers see no spurious change.
    metadata = {"Software": None}
    if _drawing_key.get():
        metadata[DATA_KEY] = _drawing_key.get()
    figure.savefig(path, format="png", dpi=_DPI, metadata=metadata)
    plt.close(figure)
    return path


@functools.cache
def _code_digest() -> str:
    """What draws the figures: this module's source and matplotlib's version."""
    return hashlib.sha256(Path(__file__).read_bytes() + matplotlib.__version__.encode()).hexdigest()


def data_key(function, data: dict) -> str:
    """The digest of one figure: the plot function, the data it is given and the drawing code."""
    text = json.dumps([function.__name__, data, _code_digest()], sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def drawn_from(path: Path) -> str | None:
    """The digest a PNG of this module carries (None: no such file, or not one of ours)."""
    from PIL import Image

    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_PREVIOUS_BYTES:
            return None
        with Image.open(path) as image:
            return image.info.get(DATA_KEY) if image.format == "PNG" else None
    except (OSError, ValueError, SyntaxError):
        return None


def _figure(function, data: dict, path: Path, previous: Path | None) -> Path | None:
    """``function(**data, path=path)``, or the file of the same name in ``previous`` when it was drawn from the same."""
    key = data_key(function, data)
    if previous is not None and drawn_from(previous / path.name) == key:
        shutil.copyfile(previous / path.name, path)
        return path
    token = _drawing_key.set(key)
    try:
        return function(**data, path=path)
    finally:
        _drawing_key.reset(token)


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


# Per-layer capture points (layers.json: points[].kind with a layer index), one line each in the layer plot.
LAYER_KINDS = {"attention": ("tab:blue", "o"), "mlp": ("tab:green", "s"), "layer": ("tab:purple", "^")}
_OTHER_KIND = ("tab:gray", "v")
# Points outside the layers (no layer index): drawn as labelled markers before and after the layer axis.
EDGE_MARKER = {"embed": "D", "norm": "P", "logits": "*"}


def _ratio(point: dict) -> float | None:
    engine, floor = _positive_number(dig(point, "engine", "rel_l2")), _positive_number(dig(point, "floor", "rel_l2"))
    return engine / floor if engine is not None and floor is not None else None


def _layer_positions(points: list[dict]) -> tuple[dict[int, float], int]:
    """x of every point: its layer index for per-layer points; the points without one (embed, norm, logits) before
    layer 0 or after the last layer, in depth order, a gap apart that keeps their labels clear of the layer ticks
    (1 up to 15 layers, 2 at 30). Also returns the layer count."""
    layers = [p["layer"] for p in points if _in_layer(p)]
    count = max(layers) + 1 if layers else 0
    first = next((i for i, p in enumerate(points) if _in_layer(p)), len(points))
    before = [i for i, p in enumerate(points) if i < first and not _in_layer(p)]
    after = [i for i, p in enumerate(points) if i > first and not _in_layer(p)]
    gap = max(1, round(count / 15))
    xs = {i: float(p["layer"]) for i, p in enumerate(points) if _in_layer(p)}
    xs |= {i: float((k - len(before)) * gap) for k, i in enumerate(before)}
    xs |= {i: float(count - 1 + (k + 1) * gap) for k, i in enumerate(after)}
    return xs, count


def layers_plot(layers: dict, path: Path) -> Path | None:
    """Which layer and which module kind departs from the floor, at any depth: the layer index on the x axis, one line
    per module kind (attention output, MLP output, the layer's output), the points outside the layers (embed, final
    norm, logits) as labelled markers before and after them. Top: engine / floor of the relative L2 error (log y)
    with the gate's ratio; a point outside its limit (layers.json: passed false) is crossed in red and the first one
    named. Bottom: the relative L2 error itself, engine solid and floor dashed (layers.json: points, gate,
    first_divergent)."""
    points = [p for p in layers.get("points") or [] if isinstance(p, dict)]
    if not points:
        return None
    xs, count = _layer_positions(points)
    kinds = list(dict.fromkeys(str(p.get("kind")) for p in points if _in_layer(p)))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9.0, 6.6), sharex=True, height_ratios=(3, 2))
    small = count > 40
    for kind in kinds:
        color, marker = LAYER_KINDS.get(kind, _OTHER_KIND)
        mine = [(xs[i], p) for i, p in enumerate(points) if str(p.get("kind")) == kind and _in_layer(p)]
        ratios = [_ratio(p) for _, p in mine]
        top.plot([x for x, _ in mine], [nan_if_none(r) for r in ratios], color=color, marker=marker,
                 markersize=2.5 if small else 4, linewidth=1.2, label=kind)  # fmt: skip
        for side, style in (("engine", "-"), ("floor", "--")):
            values = [_positive_number(dig(p, side, "rel_l2")) for _, p in mine]
            bottom.plot([x for x, _ in mine], [nan_if_none(v) for v in values], color=color, linestyle=style,
                        marker=marker if side == "engine" else None, markersize=2 if small else 3, linewidth=1,
                        label=f"{kind} {side}")  # fmt: skip
    edges = [(i, p) for i, p in enumerate(points) if not _in_layer(p)]
    for i, p in edges:
        name = str(p.get("point") or p.get("kind"))
        marker = EDGE_MARKER.get(str(p.get("kind")), "X")
        ratio = _ratio(p)
        if ratio is not None:
            top.scatter([xs[i]], [ratio], color="black", marker=marker, s=40, zorder=3)
            top.annotate(name, (xs[i], ratio), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
        for side, face in (("engine", "black"), ("floor", "none")):
            value = _positive_number(dig(p, side, "rel_l2"))
            if value is not None:
                bottom.scatter([xs[i]], [value], marker=marker, s=30, zorder=3, edgecolors="black", facecolors=face)
    gate = layers.get("gate") or {}
    ratio_limit = _positive_number(gate.get("ratio"))
    if ratio_limit is not None:
        top.axhline(ratio_limit, color="red", linestyle="--", linewidth=1,
                    label=f"gate: {gate.get('ratio')} x floor + {gate.get('epsilon', '?')}")  # fmt: skip
    top.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="engine = floor")
    failed = [(i, p) for i, p in enumerate(points) if p.get("passed") is False and _ratio(p) is not None]
    if failed:
        top.scatter([xs[i] for i, _ in failed], [_ratio(p) for _, p in failed], color="red", marker="x", s=70,
                    linewidths=2, zorder=4, label="outside its limit")  # fmt: skip
    divergent = layers.get("first_divergent")
    named = {str(p.get("point")): i for i, p in enumerate(points)}
    if isinstance(divergent, dict) and divergent.get("point") in named:
        index = named[divergent["point"]]
        if _ratio(points[index]) is not None:
            top.annotate(f"first divergent: {divergent['point']}", (xs[index], _ratio(points[index])),
                         xytext=(6, 8), textcoords="offset points", fontsize=8, color="red")  # fmt: skip
    ratios = [r for r in map(_ratio, points) if r is not None] + ([ratio_limit] if ratio_limit else [])
    if ratios:  # log y, with room above the highest point for the legend and the label of the first divergent
        top.set_yscale("log")
        top.set_ylim(min(min(ratios), 1.0) / 1.5, max(ratios) * 4)
        # ratios read as numbers (0.5, 1, 2, 5), not as powers of ten; minor ticks labelled at 2, 3 and 5 only
        top.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        top.yaxis.set_minor_formatter(FuncFormatter(_ratio_minor_label))
    errors = [v for p in points for side in SIDE_COLORS if (v := _positive_number(dig(p, side, "rel_l2")))]
    if errors:  # log y, room above for the legend
        bottom.set_yscale("log")
        bottom.set_ylim(min(errors) / 1.5, max(errors) * 3)
    top.set_ylabel("engine / floor (rel L2, log)")
    bottom.set_ylabel("relative L2 vs reference (log)")
    engine_dtype, reference = layers.get("engine_dtype", "?"), layers.get("reference_dtype", "?")
    top.set_title(f"Where the engine departs from the noise floor, layer by layer\n(engine {engine_dtype}; floor: "
                  f"transformers {engine_dtype}; both against transformers {reference})", fontsize=10)  # fmt: skip
    _layer_ticks(bottom, xs, points, count)
    for axes in (top, bottom):
        axes.grid(True, which="major", alpha=0.3)
    top.legend(fontsize=7, ncol=3, loc="upper left")
    bottom.legend(fontsize=7, ncol=len(kinds) or 1, loc="upper left", title_fontsize=7,
                  title="solid, filled: engine; dashed, hollow: floor")  # fmt: skip
    return _save(figure, path)


def _ratio_minor_label(value: float, _position=None) -> str:
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (2, 3, 5)) else ""


def _in_layer(point: dict) -> bool:
    return isinstance(point.get("layer"), int) and not isinstance(point.get("layer"), bool)


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _layer_ticks(axes, xs: dict[int, float], points: list[dict], count: int) -> None:
    """Integer layer ticks (at most about 16, so 28 or 80 layers stay readable) and the edge points by name."""
    step = next((s for s in (1, 2, 4, 5, 10, 20, 25, 50, 100) if count <= 16 * s), max(1, count // 16))
    ticks = list(range(0, count, step))
    edges = {xs[i]: str(p.get("point") or p.get("kind")) for i, p in enumerate(points) if not _in_layer(p)}
    positions = ticks + sorted(edges)
    axes.set_xticks(positions, [str(t) for t in ticks] + [edges[x] for x in sorted(edges)], fontsize=8)
    axes.set_xlabel(f"layer index ({count} layers; embed before, final norm and logits after)")


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


def _capacity_runs(bench: dict) -> tuple[list[dict], list[dict]]:
    """The concurrency-driven runs with a goodput: the ladder's points and the capacity probes' repeats."""
    ladder = [p for p in bench.get("points") or [] if isinstance(p, dict) and p.get("concurrency")]
    probes = [run for probe in dig(bench, "capacity", "probes", default=[]) or [] if isinstance(probe, dict)
              for run in probe.get("runs") or [] if isinstance(run, dict) and run.get("concurrency")]  # fmt: skip
    return [p for p in ladder if _has_goodput(p)], [r for r in probes if _has_goodput(r)]


def _has_goodput(run: dict) -> bool:
    return isinstance(run.get("goodput_req_s"), int | float) and not isinstance(run.get("goodput_req_s"), bool)


def bench_capacity_plot(bench: dict, path: Path) -> Path | None:
    """vLLM's goodput (requests/s within bench.slo) and the server's peak KV-cache usage (/metrics) against
    concurrency, ladder points as lines (one per input / output length), capacity probes as crosses; the capacity
    found and each knee marked."""
    ladder, probes = _capacity_runs(bench)
    if not ladder and not probes:
        return None
    figure, axes = plt.subplots(figsize=(7.0, 3.8))
    kv_axes = axes.twinx()
    series: dict[str, list[dict]] = {}
    for p in ladder:
        series.setdefault(f"in {p.get('input_len')} / out {p.get('output_len')}", []).append(p)
    for name, points in series.items():
        points = sorted(points, key=lambda p: p["concurrency"])
        xs = [p["concurrency"] for p in points]
        line = axes.plot(xs, [p["goodput_req_s"] for p in points], marker="o", linewidth=1.3, label=f"goodput, {name}")
        kv = [100 * nan_if_none(dig(p, "server_metrics", "kv_cache_usage", "max")) for p in points]
        kv_axes.plot(xs, kv, linestyle="--", marker=".", color=line[0].get_color(), alpha=0.6,
                     label=f"KV cache max, {name}")  # fmt: skip
    if probes:
        axes.scatter([r["concurrency"] for r in probes], [r["goodput_req_s"] for r in probes], marker="x",
                     color="black", zorder=3, label="goodput, capacity probes")  # fmt: skip
    found = dig(bench, "capacity", "capacity")
    if dig(bench, "capacity", "variable") == "concurrency" and isinstance(found, int | float):
        axes.axvline(found, color="green", linestyle=":", linewidth=1.2, label=f"capacity {found:g}")
    for knee in dig(bench, "limits", "knees", default=[]) or []:
        if isinstance(knee, dict) and isinstance(knee.get("concurrency"), int | float):
            axes.axvline(knee["concurrency"], color="grey", linestyle="-.", linewidth=1,
                         label=f"knee {knee['concurrency']:g} ({knee.get('series')})")  # fmt: skip
    axes.set_xscale("log", base=2)
    ticks = sorted({r["concurrency"] for r in [*ladder, *probes]})
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.set_xlabel("concurrency (requests in flight)")
    axes.set_ylabel("goodput, requests/s within the objective")
    kv_axes.set_ylabel("peak KV-cache usage, % (/metrics)")
    kv_axes.set_ylim(0, 105)
    objective = dig(bench, "capacity", "objective", default="bench.slo")
    axes.set_title(f"Goodput within {objective}, and peak KV cache\nvllm bench serve and /metrics "
                   f"({_bench_device(bench)})", fontsize=9)  # fmt: skip
    axes.grid(True, which="both", alpha=0.3)
    handles = [h for ax in (axes, kv_axes) for h in ax.get_legend_handles_labels()[0]]
    labels = [label for ax in (axes, kv_axes) for label in ax.get_legend_handles_labels()[1]]
    axes.legend(handles, labels, fontsize=7, loc="best")
    return _save(figure, path)


def draw(artifacts: Artifacts, plots_dir: Path, previous: Path | None = None) -> dict[str, str]:
    """Draw every plot whose data was measured into ``plots_dir``; plot name -> file name. A figure in ``previous``
    (the plots of the last report) drawn from the same data by the same code is copied instead of drawn."""
    compare = artifacts.compare
    checks = compare.records("checks")
    limit = next((c.get("limit") for c in checks if c.get("threshold") == "max_abs_logprob_diff"), None)
    evaluation = dict(compare.part("evaluation").data)
    measured = evaluation.get("status") == "measured"
    bench = dict(artifacts.bench.data)
    figures = [
        ("logprob_diff", LOGPROB_DIFF, logprob_diff_plot, {"compare": dict(compare.data), "limit": limit}),
        ("speed", SPEED, speed_plot, {"smoke": dict(artifacts.smoke.data), "baseline": dict(artifacts.baseline.data)}),
        *([("kld_cdf", KLD_CDF, kld_cdf_plot, {"evaluation": evaluation}),
           ("kld_buckets", KLD_BUCKETS, kld_buckets_plot, {"evaluation": evaluation})] if measured else []),
        ("layers_rel_l2", LAYERS_REL_L2, layers_plot, {"layers": dict(artifacts.layers.data)}),
        ("bench_throughput", BENCH_THROUGHPUT, bench_throughput_plot, {"bench": bench}),
        ("bench_latency", BENCH_LATENCY, bench_latency_plot, {"bench": bench}),
        ("bench_capacity", BENCH_CAPACITY, bench_capacity_plot, {"bench": bench}),
    ]  # fmt: skip
    previous = previous if previous is not None and previous.is_dir() and not previous.is_symlink() else None
    return {name: file for name, file, function, data in figures
            if _figure(function, data, plots_dir / file, previous)}  # fmt: skip
