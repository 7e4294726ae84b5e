"""Is this checkpoint a ternary QAT checkpoint? Positive evidence only, each piece recorded with where it was found.

Fusion fake-quantizes latent weights to ternary. That is right for a ternary quantization-aware-training checkpoint
(its forward quantizes the weights on the fly, so the fused weights are what it computed) and wrong for any other
model: an ordinary full-precision model would be turned into a ternary copy it was never trained for. So
``fuse.mode: auto`` fuses latent weights only when the checkpoint says it is a ternary QAT checkpoint, in one of
three ways (any one suffices):

1. **Quantizer tensors**: a tensor under one of the seven quantized projections inside a module whose name says it
   is a quantizer (``*quantizer*``, ``*fake_quant*``, ``*ternary*``), e.g.
   ``model.layers.0.self_attn.q_proj.weight_quantizer.alpha``.
2. **Bundled modeling code**: a Python file that config.json's ``auto_map`` names for the config or the model (and
   the local modules it imports with a relative import), read as TEXT and parsed with ``ast`` (never imported or
   run), defines a function that rounds and clips to [-1, 1] (``round`` and ``clamp``/``clip`` with bounds -1
   and 1): a ternary fake quantizer. Whether its scale is the absmean (a ``mean`` of an ``abs``) is recorded.
3. **A config declaration** in config.json: ``quantization_config`` with ``quant_method`` ``"ternary"`` or
   ``"bitcpm"`` (optional ``group_size``), or a top-level ``ternary`` / ``ternary_qat`` / ``bitnet`` key that is
   ``true`` or an object (optional ``group_size``). transformers' own ``quant_method: "bitnet"`` is not one: its
   weights are packed or scaled per tensor, not the group-wise ternary QAT this fuser implements.

The group size, when the evidence names it: ``group_size`` of a config declaration; in the bundled code, an integer
constant or parameter default whose name matches ``group_size`` / ``groupsize``, or a config.json key the code reads
(``config.<key>`` / ``getattr(config, "<key>", default)``) with such a name. Evidence naming two different group
sizes is recorded as a conflict.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

from npuport.core.errors import NpuportError
from npuport.core.paths import readable, regular_file
from npuport.weights.minicpm import model_code_files
from npuport.weights.ternary import QUANTIZED_PROJECTIONS

# BitCPM-CANN's released weights are ternary per 128 input channels: the group size when nothing names one.
DEFAULT_GROUP_SIZE = 128
QUANT_METHODS = ("ternary", "bitcpm")
DECLARATION_KEYS = ("ternary", "ternary_qat", "bitnet")
NOT_TERNARY_QAT_METHODS = {"bitnet": "transformers' BitNet: packed weights or one scale per tensor"}
MAX_CODE_BYTES = 4 << 20  # a modeling file is tens of kilobytes; refuse to parse anything near this
QUANTIZER_MODULE = re.compile(r"quantizer|fake_?quant|ternary", re.IGNORECASE)
GROUP_NAME = re.compile(r"group_?size", re.IGNORECASE)
NO_EVIDENCE = (
    "no sign of ternary QAT (no quantizer tensors, no bundled modeling code defining a ternary fake quantizer, "
    "no config declaration)"
)


def find_evidence(directory: str | Path, config: dict, tensor_names: Iterable[str]) -> dict:
    """The JSON-ready evidence document of the checkpoint in ``directory`` (introspect.json: derived.qat)."""
    directory = Path(directory)
    evidence, notes = [], []
    tensors = tensor_evidence(tensor_names)
    if tensors:
        evidence.append(tensors)
    code_files = sorted(model_code_files(config))
    for item in code_evidence(directory, config, code_files, notes):
        evidence.append(item)
    declaration = config_evidence(config, notes)
    if declaration:
        evidence.append(declaration)
    sizes = [(named["group_size"], named["where"]) for item in evidence for named in _named(item)]
    distinct = sorted({size for size, _ in sizes})
    document = {
        "found": bool(evidence),
        "summary": summary(evidence),
        "evidence": evidence,
        "looked_at": {
            "tensors": "names under the quantized projections",
            "code_files": code_files,
            "config_keys": ["quantization_config", *DECLARATION_KEYS],
        },
        "group_size": distinct[0] if len(distinct) == 1 else None,
        "group_size_from": [where for _, where in sizes],
        "group_size_conflict": len(distinct) > 1,
        "group_sizes_named": [{"group_size": size, "where": where} for size, where in sizes],
        "scale": _scale(evidence),
        "notes": notes,
    }
    return document


def _named(item: dict) -> list[dict]:
    """Every group size one piece of evidence names, with where."""
    if item.get("group_sizes_named"):
        return item["group_sizes_named"]
    return [{"group_size": item["group_size"], "where": where} for where in item.get("group_size_from", [])]


def summary(evidence: list[dict]) -> str:
    """One sentence: what says this is a ternary QAT checkpoint, or that nothing does."""
    if not evidence:
        return NO_EVIDENCE
    return "ternary QAT checkpoint: " + "; ".join(item["detail"] for item in evidence)


def _scale(evidence: list[dict]) -> str | None:
    scales = [item["scale"] for item in evidence if item.get("scale")]
    if not scales:
        return None
    return "absmean" if "absmean" in scales else scales[0]


# --- 1. tensors ----------------------------------------------------------------------------------------------------


def tensor_evidence(tensor_names: Iterable[str]) -> dict | None:
    """Quantizer modules under the quantized projections, found from tensor names alone."""
    modules = set()
    for name in tensor_names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            under_projection = any(".".join(parts[:i]).endswith(p) for p in QUANTIZED_PROJECTIONS)
            if QUANTIZER_MODULE.search(part) and under_projection:
                modules.add(".".join(parts[: i + 1]))
                break
    if not modules:
        return None
    shown = sorted(modules)
    return {
        "kind": "tensors",
        "modules": shown[:10],
        "module_count": len(shown),
        "detail": f"{len(shown)} quantizer module(s) among the tensors, e.g. {shown[0]}",
    }


# --- 2. bundled modeling code --------------------------------------------------------------------------------------


def code_evidence(directory: Path, config: dict, files: list[str], notes: list[str]) -> list[dict]:
    """A finding per bundled file (named by auto_map, or imported by one with a relative import) that defines a
    ternary fake quantizer. The files are parsed, never imported."""
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    classes = {}
    for auto_class, reference in auto_map.items():
        for ref in reference if isinstance(reference, list) else [reference]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                classes.setdefault(ref.rsplit(".", 1)[0] + ".py", []).append(auto_class)
    findings, queue, seen = [], [(name, None) for name in files], set()
    while queue:
        name, imported_by = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        tree = _parse(directory, name, notes, missing_note=imported_by is None)
        if tree is None:
            continue
        scan = _Scan(tree)
        if imported_by is None:  # one level of relative imports: where a modeling file keeps its quantizer
            queue += [(module, name) for module in scan.relative_imports if module not in seen]
        if not scan.quantizers:
            continue
        function, line, absmean = scan.quantizers[0]
        sizes = _code_group_sizes(name, scan, config)
        where = f"{name} (imported by {imported_by})" if imported_by else name
        finding = {
            "kind": "modeling_code",
            "file": name,
            "auto_map": classes.get(name, []),
            "imported_by": imported_by,
            "function": function,
            "line": line,
            "scale": "absmean" if absmean else "not recognised",
            "detail": f"bundled {where} defines a ternary fake quantizer ({function}, line {line}: round, "
            f"clip to [-1, 1], {'absmean scale' if absmean else 'scale rule not recognised as absmean'})",
        }
        finding |= _sized(sizes)
        findings.append(finding)
    return findings


def _parse(directory: Path, name: str, notes: list[str], missing_note: bool) -> ast.Module | None:
    try:
        path = regular_file(directory, name, missing_ok=True)
    except NpuportError as exc:
        notes.append(f"{name}: {exc.problem}")
        return None
    if path is None:
        if missing_note:
            notes.append(f"{name}: named by auto_map but not in the checkpoint")
        return None
    with readable(path) as handle:
        raw = handle.read(MAX_CODE_BYTES + 1)
    if len(raw) > MAX_CODE_BYTES:
        notes.append(f"{name}: larger than {MAX_CODE_BYTES} bytes, not read")
        return None
    try:
        return ast.parse(raw.decode("utf-8"), filename=name)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        notes.append(f"{name}: not parsed as Python ({type(exc).__name__})")
        return None


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _number(node: ast.AST) -> float | None:
    """The value of an int/float literal, including a negated one (``-1`` is UnaryOp(USub, 1) in the tree)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _number(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    return None


def _clips_to_unit(call: ast.Call) -> bool:
    """clamp / clip / hardtanh called with the bounds -1 and 1 (positional or min=/max=)."""
    if _callee(call) not in ("clamp", "clamp_", "clip", "clip_", "hardtanh"):
        return False
    bounds = {_number(arg) for arg in call.args} | {_number(k.value) for k in call.keywords}
    return {-1, 1} <= bounds


def _is_absmean(call: ast.Call) -> bool:
    """``x.abs().mean(...)`` or ``torch.mean(torch.abs(x))``."""
    if _callee(call) != "mean":
        return False
    parts = [*call.args, call.func.value] if isinstance(call.func, ast.Attribute) else list(call.args)
    return any(isinstance(n, ast.Call) and _callee(n) == "abs" for part in parts for n in ast.walk(part))


class _Scan(ast.NodeVisitor):
    """One parse tree: ternary quantizer functions, integer group-size names, config keys read, relative imports."""

    def __init__(self, tree: ast.Module):
        self.quantizers: list[tuple[str, int, bool]] = []  # (qualified name, line, absmean)
        self.constants: dict[str, int] = {}  # module-level integer constants
        self.sizes: list[tuple[int, str]] = []  # (value, where)
        self.config_keys: list[tuple[str, int | None, int]] = []  # (key, getattr default, line)
        self.relative_imports: list[str] = []
        self._scope: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(value := _number(node.value), int):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.constants[target.id] = value
        self.visit(tree)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 1 and node.module and "." not in node.module:
            self.relative_imports.append(f"{node.module}.py")
        elif node.level == 1 and not node.module:
            self.relative_imports += [f"{alias.name}.py" for alias in node.names if "." not in alias.name]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qualname = ".".join([*self._scope, node.name])
        calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
        rounds = any(_callee(c) in ("round", "round_") for c in calls)
        if rounds and any(_clips_to_unit(c) for c in calls):
            self.quantizers.append((qualname, node.lineno, any(_is_absmean(c) for c in calls)))
        arguments = [*node.args.posonlyargs, *node.args.args]
        defaults = [None] * (len(arguments) - len(node.args.defaults)) + list(node.args.defaults)
        pairs = list(zip(arguments, defaults, strict=True)) + list(
            zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
        )
        for arg, default in pairs:
            value = self._int(default)
            if default is not None and value is not None and GROUP_NAME.search(arg.arg):
                self.sizes.append((value, f"line {node.lineno}: parameter {arg.arg} of {qualname} defaults to {value}"))
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        value = self._int(node.value)
        for target in node.targets:
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
            if value is not None and name and GROUP_NAME.search(name):
                self.sizes.append((value, f"line {node.lineno}: {name} = {value}"))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_config(node.value) and GROUP_NAME.search(node.attr):
            self.config_keys.append((node.attr, None, node.lineno))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        args = node.args
        if _callee(node) == "getattr" and len(args) >= 2 and _is_config(args[0]):
            key = args[1].value if isinstance(args[1], ast.Constant) and isinstance(args[1].value, str) else None
            if key and GROUP_NAME.search(key):
                self.config_keys.append((key, self._int(args[2]) if len(args) > 2 else None, node.lineno))
        self.generic_visit(node)

    def _int(self, node: ast.AST | None) -> int | None:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        value = _number(node)
        return value if isinstance(value, int) else None


def _is_config(node: ast.AST) -> bool:
    """``config`` or ``<anything>.config`` (self.config, model.config)."""
    return (isinstance(node, ast.Name) and node.id == "config") or (
        isinstance(node, ast.Attribute) and node.attr == "config"
    )


def _code_group_sizes(name: str, scan: _Scan, config: dict) -> list[tuple[int, str]]:
    """Group sizes the file names: config.json keys it reads (their value, else the getattr default), constants and
    parameter defaults."""
    sizes = []
    for key, default, line in scan.config_keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            sizes.append((value, f"config.json {key} = {value} (read by {name} line {line})"))
        elif default is not None:
            where = f"{name} line {line}: getattr(config, {key!r}, {default}) (config.json has no {key})"
            sizes.append((default, where))
    return sizes + [(value, f"{name} {where}") for value, where in scan.sizes]


def _sized(sizes: list[tuple[int, str]]) -> dict:
    distinct = sorted({value for value, _ in sizes})
    return {
        "group_size": distinct[0] if len(distinct) == 1 else None,
        "group_size_from": [where for _, where in sizes] if len(distinct) == 1 else [],
        "group_sizes_named": [{"group_size": v, "where": w} for v, w in sizes] if len(distinct) > 1 else [],
    }


# --- 3. config declaration -----------------------------------------------------------------------------------------


def config_evidence(config: dict, notes: list[str]) -> dict | None:
    """A ternary QAT declaration in config.json (the accepted forms are in the module docstring)."""
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict):
        method = quantization.get("quant_method")
        method = method.lower() if isinstance(method, str) else method
        if method in QUANT_METHODS:
            return _declaration("quantization_config", quantization, f"quant_method {method!r}")
        if method in NOT_TERNARY_QAT_METHODS:
            notes.append(
                f"config.json quantization_config quant_method {method!r} ({NOT_TERNARY_QAT_METHODS[method]}) is not "
                "the group-wise ternary QAT this fuser implements"
            )
    for key in DECLARATION_KEYS:
        value = config.get(key)
        if value is True or isinstance(value, dict):
            return _declaration(key, value if isinstance(value, dict) else {}, repr(value) if value is True else "")
    return None


def _declaration(key: str, fields: dict, what: str) -> dict:
    size = fields.get("group_size")
    valid = isinstance(size, int) and not isinstance(size, bool)
    where = [f"config.json {key}.group_size = {size}"] if valid else []
    return {
        "kind": "config",
        "key": key,
        "detail": f"config.json {key} declares it{f' ({what})' if what else ''}",
        "group_size": size if valid else None,
        "group_size_from": where,
        "group_sizes_named": [],
    }


def qat_of(introspection: dict) -> dict:
    """The QAT evidence introspection recorded (introspect.json: derived.qat); an older document without it: none."""
    qat = introspection.get("derived", {}).get("qat") if isinstance(introspection, dict) else None
    return qat if isinstance(qat, dict) else {"found": False, "summary": NO_EVIDENCE, "evidence": []}


def declaration_keys(evidence: dict) -> list[str]:
    """The config.json keys whose declaration was evidence (the plain fused model drops them)."""
    return [item["key"] for item in evidence.get("evidence", []) if item.get("kind") == "config"]


def qat_code_files(evidence: dict) -> list[str]:
    """The auto_map files found to define the ternary fake quantizer."""
    return [item["file"] for item in evidence.get("evidence", []) if item.get("kind") == "modeling_code"]
