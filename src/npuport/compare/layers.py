"""Where the port diverges: the engine against the reference point by point, each point against its noise floor.

At every capture point (embedding, each decoder layer's attention, MLP and output, final norm, logits) on the
same teacher-forced tokens, four tensors of ``[tokens, width]``: the engine's (captured by `smoke` in its workers),
the reference's at the engine's dtype with two attention implementations (its default, sdpa, and another, eager:
two correct implementations at the engine's precision) and the reference's at ``reference_dtype`` (float32). Every
lower-precision side is measured against the full-precision one: cosine similarity, relative L2 error and max |Δ|
(msprobe's per-layer measures), and the gain ⟨x - ref, ref⟩ / ⟨ref, ref⟩, the part of the error along the reference.

A point passes when both hold (``Gate``):

- relative L2 error <= ratio x the larger floor of the two implementations + epsilon: a correct implementation
  differs from full precision by what either correct implementation at its precision differs (one implementation
  alone understates that at attention points, where rounding order differs most between kernels);
- |gain| <= ratio x the larger |gain| of the two floors + gain_allowance x that floor's relative L2 + epsilon:
  rounding noise is nearly orthogonal to the reference, a scale or bias bug is not, so a 3 % scale that hides in
  the noise of the relative L2 of a deep layer stands out along the reference.

The first point in depth order that does not pass is where the port departs from what a correct implementation at
its precision does.

Memory stays bounded by one point of one sequence (plus one sequence's low-precision captures on disk): the
references at the engine's dtype run first and write their points per sequence; then the full-precision reference
runs, and its hooks score every point as it is produced, against the engine's and the low-precision tensors read
lazily from their files. The document holds metrics, not tensors; with ``layers.dumps`` the sides' tensors are kept
as safetensors.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npuport.compare.floor import Reference, engine_dtype
from npuport.compare.hf_capture import ReferenceTaps
from npuport.compare.layer_plan import LayerSequence, LayersSettings, depth, point_kind, point_module
from npuport.core.atomic import read_json, write_json
from npuport.core.errors import NpuportError

log = logging.getLogger(__name__)

ROW_CHUNK = 64  # token rows per float64 chunk (a logits row is a vocabulary wide)
METHOD = (
    "teacher-forced on the prompts (with the engine's outputs) and the start of the evaluation text: the engine's "
    "hidden states captured by forward hooks in its workers, transformers' by forward hooks at the same modules; "
    "engine and floor (transformers at the engine's dtype) each against transformers at reference_dtype, pooled "
    "over every token: cosine of the flattened tensors, relative L2 error ||x - ref|| / ||ref||, max |x - ref|"
)
GATE_RULE = "engine rel_l2 <= ratio x max(floor rel_l2 of both implementations) + epsilon"
GAIN_RULE = "|engine gain| <= ratio x max(|floor gain|) + gain_allowance x max(floor rel_l2) + epsilon"


@dataclass
class PointStats:
    """Running sums of one side at one point against the full-precision reference, over every token seen."""

    dot: float = 0.0
    side_sq: float = 0.0
    ref_sq: float = 0.0
    diff_sq: float = 0.0
    max_abs: float = 0.0
    nonfinite: int = 0
    tokens: int = 0

    def add(self, side: torch.Tensor, reference: torch.Tensor) -> None:
        """Add one sequence's ``[tokens, width]`` tensors (any dtypes), in float64 chunks of ROW_CHUNK rows."""
        for start in range(0, side.shape[0], ROW_CHUNK):
            s, r = side[start : start + ROW_CHUNK].double(), reference[start : start + ROW_CHUNK].double()
            finite = torch.isfinite(s) & torch.isfinite(r)
            self.nonfinite += int((~finite).sum())
            s, r = torch.where(finite, s, 0.0), torch.where(finite, r, 0.0)
            diff = s - r
            self.dot += float((s * r).sum())
            self.side_sq += float((s * s).sum())
            self.ref_sq += float((r * r).sum())
            self.diff_sq += float((diff * diff).sum())
            if diff.numel():
                self.max_abs = max(self.max_abs, float(diff.abs().max()))
        self.tokens += side.shape[0]

    @property
    def cosine(self) -> float:
        if self.side_sq == 0.0 or self.ref_sq == 0.0:
            return 1.0 if self.side_sq == self.ref_sq else 0.0
        return min(1.0, self.dot / math.sqrt(self.side_sq * self.ref_sq))

    @property
    def rel_l2(self) -> float:
        if self.ref_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def gain(self) -> float:
        """⟨side - ref, ref⟩ / ⟨ref, ref⟩: the error's component along the reference (a scale of 1 + s gives s)."""
        if self.ref_sq == 0.0:
            return 0.0 if self.side_sq == 0.0 else math.inf
        return (self.dot - self.ref_sq) / self.ref_sq

    def metrics(self) -> dict[str, Any]:
        rel_l2, gain = self.rel_l2, self.gain
        return {"cosine": self.cosine, "rel_l2": rel_l2 if math.isfinite(rel_l2) else None,
                "gain": gain if math.isfinite(gain) else None, "max_abs": self.max_abs,
                "nonfinite": self.nonfinite}  # fmt: skip


@dataclass
class PointPair:
    """The lower-precision sides at one point: the engine and the floor's two implementations."""

    engine: PointStats = field(default_factory=PointStats)
    floor: PointStats = field(default_factory=PointStats)  # the reference at the engine's dtype, default attention
    floor_alt: PointStats = field(default_factory=PointStats)  # the same with the other attention implementation


@dataclass(frozen=True)
class Gate:
    ratio: float
    epsilon: float
    gain_allowance: float = 0.5

    def limit(self, floor_rel_l2: float) -> float:
        return self.ratio * floor_rel_l2 + self.epsilon

    def gain_limit(self, floor_gain: float, floor_rel_l2: float) -> float:
        return self.ratio * floor_gain + self.gain_allowance * floor_rel_l2 + self.epsilon

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "epsilon": self.epsilon, "gain_allowance": self.gain_allowance,
                "metric": "rel_l2", "rule": GATE_RULE, "gain_rule": GAIN_RULE}  # fmt: skip


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0.0:
        return None
    return value / floor


def _span(*values: float | None) -> float | None:
    """The larger of the floors' values (None when every side is missing)."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def point_record(point: str, pair: PointPair, gate: Gate) -> dict[str, Any]:
    """One point of layers.json: the sides' metrics, the floor spanning both implementations, both limits, and
    whether the engine is within the gate."""
    engine, floor, alt = pair.engine.metrics(), pair.floor.metrics(), pair.floor_alt.metrics()
    if pair.floor_alt.tokens == 0:  # no second implementation measured: the default one alone
        alt = floor
    kind, layer = point_kind(point)
    span = _span(floor["rel_l2"], alt["rel_l2"])
    gains = [abs(g) for g in (floor["gain"], alt["gain"]) if g is not None]
    limit = gate.limit(span) if span is not None else None
    gain_limit = gate.gain_limit(max(gains), span) if gains and span is not None else None
    within_l2 = engine["rel_l2"] is not None and limit is not None and engine["rel_l2"] <= limit
    within_gain = engine["gain"] is not None and gain_limit is not None and abs(engine["gain"]) <= gain_limit
    passed = bool(engine["nonfinite"] == 0 and within_l2 and within_gain)
    return {
        "point": point, "module": point_module(point), "kind": kind, "layer": layer, "tokens": pair.engine.tokens,
        "engine": engine, "floor": floor, "floor_alt": alt, "floor_rel_l2": span,
        "ratio_rel_l2": _ratio(engine["rel_l2"], span),
        "ratio_cosine_distance": _ratio(max(0.0, 1.0 - engine["cosine"]), max(0.0, 1.0 - floor["cosine"])),
        "limit_rel_l2": limit, "limit_gain": gain_limit,
        "margin": _span(_ratio(engine["rel_l2"], limit),
                        _ratio(abs(engine["gain"]) if engine["gain"] is not None else None, gain_limit)),
        "within_rel_l2": within_l2, "within_gain": within_gain, "passed": passed,
    }  # fmt: skip


def first_divergent(points: Sequence[Mapping[str, Any]], gate: Gate) -> dict[str, Any] | None:
    """The first point in depth order outside the gate, with the evidence: its numbers and the point before it."""
    for index, point in enumerate(points):
        if point["passed"]:
            continue
        before = points[index - 1] if index else None
        return {"point": point["point"], "module": point["module"], "layer": point["layer"], "kind": point["kind"],
                "ratio": point["ratio_rel_l2"], "margin": point.get("margin"),
                "previous": before["point"] if before else None, "evidence": evidence(point, before, gate)}  # fmt: skip
    return None


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def evidence(point: Mapping[str, Any], before: Mapping[str, Any] | None, gate: Gate) -> str:
    """One sentence: the point's error against its floor and the gate, and that the point before it passed."""
    engine, floor = point["engine"], point["floor"]
    text = (
        f"{point['module']}: relative L2 error {_number(engine['rel_l2'])} against the floor's "
        f"{_number(point.get('floor_rel_l2', floor['rel_l2']))} (x{_number(point['ratio_rel_l2'], 2)}; gate "
        f"x{gate.ratio:g} + {gate.epsilon:g} = {_number(point['limit_rel_l2'])}), gain {_number(engine.get('gain'))} "
        f"(limit {_number(point.get('limit_gain'))}), cosine {engine['cosine']:.6f} (floor {floor['cosine']:.6f}), "
        f"max |Δ| {_number(engine['max_abs'])} (floor {_number(floor['max_abs'])})"
    )
    if engine["nonfinite"]:
        text += f", {engine['nonfinite']} non-finite values"
    if before is not None:
        text += f"; the point before it, {before['module']}, is within the gate (x{_number(before['ratio_rel_l2'], 2)})"
    return text


def summary(points: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The largest ratio to the floor over every point, and where."""
    rated = [p for p in points if p["ratio_rel_l2"] is not None]
    if not rated:
        return None
    worst = max(rated, key=lambda p: p["ratio_rel_l2"])
    return {"max_ratio_rel_l2": worst["ratio_rel_l2"], "point": worst["point"]}


# --- the two reference passes ----------------------------------------------------------------------------------

ENGINE_DUMP = "engine-{index:03d}.safetensors"
FLOOR_FILE = "floor-{dtype}-{index:03d}.safetensors"  # the reference at the engine's dtype
ALT_FILE = "floor-{dtype}-{attention}-{index:03d}.safetensors"  # the same with the other attention implementation
REFERENCE_FILE = "reference-{dtype}-{index:03d}.safetensors"  # the reference at reference_dtype


def _collector(captured: dict[str, torch.Tensor]):
    def sink(point: str, tensor: torch.Tensor) -> None:
        captured[point] = tensor.clone()

    return sink


def low_precision_pass(
    reference: Reference, sequences: Sequence[LayerSequence], work: Path, name: str = FLOOR_FILE
) -> list[Path]:
    """The reference at the engine's dtype on every sequence: every point of each, in its own dtype, written to
    ``work`` (one file per sequence, named by ``name``)."""
    from safetensors.torch import save_file

    files = []
    for index, sequence in enumerate(sequences):
        captured: dict[str, torch.Tensor] = {}
        with ReferenceTaps(reference.model, _collector(captured)):
            reference.logits(sequence.token_ids)
        path = work / name.format(dtype=reference.dtype, attention=reference.attn_implementation, index=index)
        save_file(captured, str(path))
        files.append(path)
        log.info("%s reference: sequence %d/%d captured (%d tokens)", reference.dtype, index + 1, len(sequences),
                 len(sequence.token_ids))  # fmt: skip
    return files


@dataclass(frozen=True)
class SequenceFiles:
    """One sequence's captures: the engine's (from smoke), the floor's, and where to keep the full reference's."""

    engine: Path
    floor: Path
    keep: Path | None = None
    floor_alt: Path | None = None


def score_sequence(
    reference: Reference, sequence: LayerSequence, files: SequenceFiles, pairs: dict[str, PointPair]
) -> None:
    """The full-precision reference on one sequence; its hooks score each point as the forward pass produces it,
    against the engine's and the floor's tensors of that point (read one at a time)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    kept: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(safe_open(str(files.engine), "pt"))
        floor = stack.enter_context(safe_open(str(files.floor), "pt"))
        alt = stack.enter_context(safe_open(str(files.floor_alt), "pt")) if files.floor_alt else None

        def sink(point: str, full: torch.Tensor) -> None:
            other = engine.get_tensor(point)
            if other.shape != full.shape:
                raise NpuportError(files.engine, f"{point}: the engine captured {list(other.shape)}, the reference "
                                                 f"computes {list(full.shape)}")  # fmt: skip
            pair = pairs.setdefault(point, PointPair())
            pair.engine.add(other, full)
            pair.floor.add(floor.get_tensor(point), full)
            if alt is not None:
                pair.floor_alt.add(alt.get_tensor(point), full)
            if files.keep is not None:
                kept[point] = full.clone()

        taps = ReferenceTaps(reference.model, sink)
        missing = [p for p in taps.points if p not in set(engine.keys())]
        if missing:
            raise NpuportError(files.engine, f"no engine capture of {', '.join(missing)} (the reference has them)")
        with taps:
            reference.logits(sequence.token_ids)
    if files.keep is not None:
        save_file(kept, str(files.keep))


def reference_passes(
    model_dir: Path,
    sequences: Sequence[LayerSequence],
    *,
    engine_files: Sequence[Path],
    dtypes: tuple[str, str],
    work: Path,
    keep: bool,
    trust_remote_code: bool = False,
) -> dict[str, PointPair]:
    """Both sides at every point over every sequence: the reference at ``dtypes[0]`` (the engine's) first, then at
    ``dtypes[1]`` (full precision) scoring the engine and that floor; one model in memory at a time."""
    low = Reference(model_dir, dtypes[0], trust_remote_code)
    floor_files = low_precision_pass(low, sequences, work)
    other = "sdpa" if low.attn_implementation == "eager" else "eager"
    low.close()
    alt = Reference(model_dir, dtypes[0], trust_remote_code, attn_implementation=other)
    alt_files = low_precision_pass(alt, sequences, work, ALT_FILE)
    alt.close()
    full = Reference(model_dir, dtypes[1], trust_remote_code)
    pairs: dict[str, PointPair] = {}
    for index, sequence in enumerate(sequences):
        keep_path = work / REFERENCE_FILE.format(dtype=dtypes[1], index=index) if keep else None
        files = SequenceFiles(engine_files[index], floor_files[index], keep_path, alt_files[index])
        score_sequence(full, sequence, files, pairs)
        log.info("sequence %d/%d scored at %d points", index + 1, len(sequences), len(pairs))
    full.close()
    return pairs


# --- the stage ---------------------------------------------------------------------------------------------------


def unmeasurable(smoke: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(why the layer comparison cannot run, the capture's mode); (None, mode) when it can."""
    capture = smoke.get("layers")
    mode = capture.get("mode") if isinstance(capture, Mapping) else None
    if smoke.get("status") != "ok":
        return f"smoke status {smoke.get('status')}: {smoke.get('reason') or 'no reason given'}", mode
    if not isinstance(capture, Mapping):
        return "smoke.json holds no layer capture (the engine stage ran without one)", mode
    if capture.get("status") != "captured":
        return f"layer capture {capture.get('status')}: {capture.get('reason') or 'no reason given'}", mode
    return None, mode


def capture_files(names: Sequence[str], capture_dir: str | Path, sequences: int) -> list[Path]:
    """The engine's capture files, one per sequence, checked before any model loads."""
    files = [Path(capture_dir) / name for name in names]
    if len(files) != sequences:
        raise NpuportError(capture_dir, f"{len(files)} layer capture files for {sequences} sequences in smoke.json")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise NpuportError(capture_dir, f"layer capture file(s) missing: {', '.join(missing)}")
    return files


def layers_document(status: str, reason: str | None, *, settings: LayersSettings, **fields: Any) -> dict[str, Any]:
    """layers.json: every key present whatever the status."""
    doc: dict[str, Any] = {
        "stage": "layers", "status": status, "reason": reason, "mode": None, "settings": settings.as_dict(),
        "gate": Gate(settings.ratio, settings.epsilon, settings.gain_allowance).as_dict(),
        "reference_dtype": None, "engine_dtype": None, "tokens": 0, "sequences": [], "points": [],
        "first_divergent": None, "summary": None,
        "dumps": {"kept": False, "reason": "not measured"}, "method": METHOD,
    }  # fmt: skip
    doc.update(fields)
    return doc


@contextlib.contextmanager
def work_area(dumps_dir: str | Path | None) -> Iterator[Path]:
    """Where the floor's captures go while the stage runs: the dumps directory, else a temporary one."""
    if dumps_dir is not None:
        Path(dumps_dir).mkdir(parents=True, exist_ok=True)
        yield Path(dumps_dir)
        return
    with tempfile.TemporaryDirectory(prefix="npuport-layers-") as tmp:
        yield Path(tmp)


def finish_dumps(
    work: Path, *, keep: bool, dumps_dir: str | Path | None, engine_files: Sequence[Path], sequences: Sequence
) -> dict[str, Any]:
    """Keep the three sides' tensors (engine copied from smoke's capture) with a manifest, or remove the floor's
    scratch files; layers.json's "dumps" entry."""
    if not keep or dumps_dir is None:
        for scratch in work.glob("floor-*.safetensors"):
            scratch.unlink()
        dumps = {"kept": False, "reason": "layers.dumps is false" if not keep else "no dumps directory given"}
        if dumps_dir is not None:
            write_json(work / "manifest.json", dumps)
        return dumps
    for index, source in enumerate(engine_files):
        shutil.copyfile(source, work / ENGINE_DUMP.format(index=index))
    files = sorted(p.name for p in work.glob("*.safetensors"))
    manifest = {"kept": True, "files": files, "sequences": list(sequences), "layout": DUMPS_LAYOUT}
    write_json(work / "manifest.json", manifest)
    return manifest


DUMPS_LAYOUT = (
    "one safetensors file per sequence and side (engine-NNN, floor-<engine dtype>-NNN: the reference at the "
    "engine's dtype, floor-<engine dtype>-<attention>-NNN: the same with the other attention implementation, "
    "reference-<reference dtype>-NNN), NNN the sequence's index in layers.json; one tensor per "
    "capture point, named as layers.json's points, [tokens, width] in the side's own dtype"
)


def compare_layers(
    smoke: Mapping[str, Any],
    model_dir: str | Path,
    settings: LayersSettings,
    *,
    capture_dir: str | Path | None,
    reference_dtype: str = "float32",
    trust_remote_code: bool = False,
    dumps_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The layers.json document: the engine's capture recorded in ``smoke`` (smoke.json; files in ``capture_dir``)
    against the reference in ``model_dir`` at ``reference_dtype`` and at the engine's dtype. ``dumps_dir`` (an
    existing directory, the stage's output) receives the tensors with ``settings.dumps``, else only a manifest."""
    reason, mode = unmeasurable(smoke)
    if reason is None and capture_dir is None:
        reason = "no capture directory given"
    if reason is not None:
        log.warning("layers: not measured: %s", reason)
        if dumps_dir is not None:
            write_json(Path(dumps_dir) / "manifest.json", {"kept": False, "reason": f"not measured: {reason}"})
        return layers_document("not measured", reason, settings=settings, mode=mode)
    model_dir = Path(model_dir)
    low_dtype = engine_dtype(smoke["settings"]["engine"]["dtype"], read_json(model_dir / "config.json"))
    sequences = [LayerSequence.from_dict(s) for s in smoke["layers"]["sequences"]]
    engine_files = capture_files(smoke["layers"]["capture"]["files"], capture_dir, len(sequences))
    listed = [{"source": s.source, "tokens": len(s.token_ids)} for s in sequences]
    with work_area(dumps_dir) as work:
        pairs = reference_passes(model_dir, sequences, engine_files=engine_files, dtypes=(low_dtype, reference_dtype),
                                 work=work, keep=settings.dumps, trust_remote_code=trust_remote_code)  # fmt: skip
        dumps = finish_dumps(work, keep=settings.dumps, dumps_dir=dumps_dir, engine_files=engine_files,
                             sequences=listed)  # fmt: skip
    gate = Gate(settings.ratio, settings.epsilon, settings.gain_allowance)
    points = [point_record(point, pairs[point], gate) for point in sorted(pairs, key=depth)]
    divergent = first_divergent(points, gate)
    if divergent:
        log.warning("layers: diverges first at %s", divergent["evidence"])
    return layers_document(
        "failed" if divergent else "passed", f"diverges first at {divergent['module']}" if divergent else None,
        settings=settings, mode=mode, reference_dtype=reference_dtype, engine_dtype=low_dtype,
        tokens=sum(s["tokens"] for s in listed), sequences=listed, points=points, first_divergent=divergent,
        summary=summary(points), dumps=dumps,
    )  # fmt: skip
