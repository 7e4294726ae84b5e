"""Mutation run over the verdict code: one deliberate mistake at a time, each run against the fast tests of its module.

    python benchmarks/mutation.py                         # every module, a table of caught / survived per module
    python benchmarks/mutation.py --module gates layers   # some of them
    python benchmarks/mutation.py --list                  # the mutants only, nothing run
    python benchmarks/mutation.py --survivors             # also print every surviving mutant

A mutant is one AST edit inside the functions that compute a verdict (``MODULES``: operator swaps, comparison
boundary and negation flips, constants changed, min/max and mean/median swaps, percentiles moved, booleans and
conditions negated, the first two arguments of a call or values of a dict swapped, status words and symbols
swapped). Text that only words a message (f-strings, log calls, the report's message catalog) is not mutated.

Nothing is written to the working tree: the runner process imports the heavy libraries once, then forks one child
per mutant; the child installs an import hook that serves the mutated source of the target module (compiled from
the AST, under the module's own file name) and runs pytest on the module's fast tests in-process. A child that
fails a test or errors kills the mutant; one that passes lets it survive; one past ``--timeout`` is killed by pid.

Survivors listed in ``HARMLESS`` (with the reason they change no verdict: an equivalent mutant, or one that only
changes wording or an unused default) are shown apart; "verdict-changing survivors" are the others, as a share of the
mutants that are not harmless. Written for issue 25
(benchmarks/README.md has the counts); why not mutmut or cosmic-ray is said there too.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.util
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
FAST = ["-m", "not engine and not e2e"]
RECHECK = 25  # mutants between two clean runs (the tree may change under a long run)


@dataclass(frozen=True)
class Target:
    module: str  # dotted name under src/
    scope: tuple[str, ...]  # top-level functions, classes and assignments mutated ("*": all of them)
    tests: tuple[str, ...]  # pytest arguments (paths that do not exist are left out)


MODULES: dict[str, Target] = {
    "statistics": Target("npuport.compare.statistics", ("*",), ("tests/test_statistics.py",)),
    "gates": Target("npuport.compare.gates", ("*",), ("tests/test_gates.py", "tests/test_compare.py")),
    "floor": Target(
        "npuport.compare.floor",
        (
            "ROW_CHUNK",
            "CDF_POINTS",
            "Reference",
            "engine_dtype",
            "_logprobs",
            "accumulate_segment",
            "kld_quantiles",
            "low_precision_logits",
            "evaluate_segments",
        ),
        ("tests/test_floor.py", "tests/test_compare.py"),
    ),
    "layers": Target(
        "npuport.compare.layers",
        ("PointStats", "Gate", "_ratio", "point_record", "first_divergent", "summary"),
        (
            "tests/test_layer_metrics.py",
            "tests/test_layers.py::test_streamed_metrics_equal_the_whole_tensor_formulas",
            "tests/test_layers.py::test_non_finite_values_are_counted_and_fail_the_point",
            "tests/test_layers.py::test_first_divergent_point_is_the_first_outside_the_gate_in_depth_order",
        ),
    ),
    "accuracy": Target(
        "npuport.accuracy.gate",
        ("*",),
        (
            "tests/test_accuracy_gate.py",
            "tests/test_accuracy.py::test_mcnemar_is_the_one_sided_binomial_tail_of_the_discordant_pairs",
            "tests/test_accuracy.py::test_wilson_interval_and_stderr",
            "tests/test_accuracy.py::test_minimum_detectable_drop_solves_connors_mcnemar_sample_size",
            "tests/test_accuracy.py::test_gate_fails_on_a_real_drop_and_passes_on_noise",
            "tests/test_accuracy.py::test_gate_fails_a_large_drop_that_is_not_significant_and_flags_too_few_items",
            "tests/test_accuracy.py::test_gate_does_not_measure_unpaired_or_missing_tasks",
        ),
    ),
    "bench": Target(
        "npuport.engines.bench",
        (
            "summarize",
            "held_check",
            "efficiency_row",
            "efficiency_check",
            "_baseline_points",
            "regression_check",
            "stage_status",
        ),
        ("tests/test_bench_checks.py",),
    ),  # fmt: skip
    "bandwidth": Target(
        "npuport.engines.bandwidth",
        ("nominal_bandwidth", "accelerator_names", "select_bandwidth", "DecodeBytes", "decode_bytes"),
        ("tests/test_bench_checks.py", "tests/test_bench.py::test_nominal_bandwidth_table"),
    ),  # fmt: skip
    "verdicts": Target(
        "npuport.report.verdicts",
        (
            "SYMBOLS",
            "config_verdict",
            "fusion_verdict",
            "qat_forward_verdict",
            "layers_verdict",
            "engine_verdict",
            "baseline_verdict",
            "accelerator_verdict",
            "serve_verdict",
            "_bench_disabled",
            "bench_held_verdict",
            "bench_regression_verdict",
            "accuracy_verdict",
            "_compare_not_measured",
            "tokens_verdict",
            "_no_switch",
            "_gate_verdict",
            "gate_verdicts",
            "verdicts",
            "overall_status",
        ),
        ("tests/test_verdicts.py", "tests/test_report.py::test_npu_row_is_passed_only_for_an_npu_platform_that_ran"),
    ),  # fmt: skip
}

# Survivors that change no verdict, by (module, mutant description) -> why. A description names the function and
# the edit; it does not carry a line number, so it survives unrelated edits of the file.
SYMMETRIC = "min / max of two values: the same whichever comes first"
SPAN = "_span is the larger of the values present: the same whichever comes first"
SOLVER = "the solver's lower bracket or tolerance: the answer moves by < 1e-8, below the 1e-6 points it is recorded to"
EXACT = "differs only where two computed reals are equal to the last bit"
ROUNDING = "the decimals a figure is recorded to (points, 6 or 7): nothing is judged on the last one"
UNKNOWN_DTYPE = ("the width assumed for a tensor dtype outside DTYPE_BYTES (none of those fuse writes); the efficiency "
                 "figure is reported, no gate reads it")  # fmt: skip
WORDING = "the row's wording only (its detail or reason), not its status"
LAST_AXIS = "dim -1 and dim 1 are the same axis of the 2-D [positions, vocab] tensors (and [positions, 1] index) here"
HARMLESS: dict[tuple[str, str], str] = {
    ("statistics", "mean_and_uncertainty: `var > 0`: Gt -> GtE"): "var == 0 gives sqrt(0 / (n - 1)) = 0 either way",
    **{("statistics", f"position_values: `-1`: drop USub{n}"): LAST_AXIS
       for n in ("", " (#2)", " (#3)", " (#4)", " (#5)", " (#6)", " (#7)", " (#8)")},
    ("statistics", "KldAccumulator: `0`: 0 -> 1"): "the positions of an accumulator that holds no chunk: there is no "
    "value to mask either way, n is 0",
    ("statistics", "_log_ppl_ratio: `0.0`: 0.0 -> 1.0"): "the covariance below 10 positions, where both standard "
    "errors are 0 too (llama.cpp: none below 11): max(0 + 0 - 2 cov, 0) is 0 either way",
    ("statistics", "_log_ppl_ratio: `max(unc_o ** 2 + unc_b ** 2 - 2 * cov, 0.0)`: swap first two arguments"):
    SYMMETRIC,
    ("statistics", "summarize: `0`: 0 -> 1 (#2)"): "p_diff's default when it is absent: position_values always gives "
    "it with kld, and without kld n is 0 before p_diff is read",
    ("floor", "ROW_CHUNK: `128`: 128 -> 129"): "how many rows a float64 chunk holds: memory, not values",
    ("floor", "Reference: `-1`: drop USub"): LAST_AXIS,
    ("floor", "_logprobs: `-1`: drop USub"): LAST_AXIS,
    ("floor", "accumulate_segment: `min(start + ROW_CHUNK, rows)`: swap first two arguments"): SYMMETRIC,
    ("floor", "evaluate_segments: `{'engine': KldAccumulator(), 'floor': KldAccumulator()}`: swap the first two dict "
     "values"): "two new, empty accumulators",
    ("layers", "PointStats: `max(self.max_abs, float(diff.abs().max()))`: swap first two arguments"): SYMMETRIC,
    ("layers", "PointStats: `min(1.0, self.dot / math.sqrt(self.side_sq * self.ref_sq))`: swap first two arguments"):
    SYMMETRIC,
    ("layers", "point_record: `max(0.0, 1.0 - engine['cosine'])`: swap first two arguments"): SYMMETRIC,
    ("layers", "point_record: `max(0.0, 1.0 - floor['cosine'])`: swap first two arguments"): SYMMETRIC,
    ("layers", "point_record: `_span(floor['rel_l2'], alt['rel_l2'])`: swap first two arguments"): SPAN,
    ("layers", "point_record: `_span(_ratio(engine['rel_l2'], limit), _ratio(abs(engine['gain']) i...`: swap first two "
     "arguments"): SPAN,
    ("layers", "point_record: `gains and span is not None`: and <-> or"): "a floor's gain is missing exactly when its "
    "relative L2 is (both need a non-zero reference, and then the difference is the side itself): gains is empty "
    "exactly when span is None",
    ("accuracy", "minimum_detectable_drop: `0`: 0 -> 1 (#2)"): "n <= 1 instead of n <= 0 returns 1.0: at n = 1 the "
    "answer is 1.0 anyway (a drop of the one item needs z_alpha^2 = 2.7 pairs)",
    ("accuracy", "minimum_detectable_drop: `min(delta + noise, 1.0)`: swap first two arguments"): SYMMETRIC,
    ("accuracy", "minimum_detectable_drop: `max(psi - delta * delta, 0.0)`: swap first two arguments"): SYMMETRIC,
    ("accuracy", "minimum_detectable_drop: `needed_minus_n(1.0) > 0`: Gt -> GtE"): "needed_minus_n(1.0) = z_alpha^2 "
    "- n (psi = 1) is never exactly 0 for an integer n",
    ("accuracy", "minimum_detectable_drop: `1e-09`: 1e-09 -> 2e-09"): SOLVER,
    ("accuracy", "minimum_detectable_drop: `1e-09`: 1e-09 -> 2e-09 (#2)"): SOLVER,
    ("accuracy", "minimum_detectable_drop: `1.0`: 1.0 -> 2.0 (#5)"): "the solver's upper bracket: the one root lies "
    "in (0, 1] (needed_minus_n(1.0) <= 0 was checked) and the function stays negative above it",
    ("accuracy", "task_verdict: `mdd > max_drop`: Gt -> GtE"): EXACT,
    ("accuracy", "task_verdict: `mdd > max_drop`: Gt -> GtE (#2)"): EXACT,
    ("accuracy", "task_verdict: `6`: 6 -> 7"): ROUNDING,
    ("accuracy", "task_verdict: `6`: 6 -> 7 (#2)"): ROUNDING,
    ("accuracy", "accuracy_check: `10.0`: 10.0 -> 20.0"): "the function's default max_drop, never used: the stage "
    "passes accuracy.max_drop (npuport.accuracy.accuracy)",
    ("bandwidth", "decode_bytes: `2`: 2 -> 3"): UNKNOWN_DTYPE,
    ("bandwidth", "decode_bytes: `2`: 2 -> 3 (#2)"): UNKNOWN_DTYPE,
    ("bandwidth", "decode_bytes: `info.nbytes // own`: FloorDiv -> Div"): "a tensor's bytes are a whole number of its "
    "elements: the same number, as a float",
    ("bandwidth", "decode_bytes: `size //= info.shape[0]`: FloorDiv -> Div"): "the embedding's bytes are a whole "
    "number of rows: the same number, as a float",
    ("bandwidth", "decode_bytes: `0`: 0 -> 1 (#3)"): "which tensor names the checkpoint's dtype under dtype auto: the "
    "same tensor dtype in a checkpoint of one dtype",
    ("bandwidth", "decode_bytes: `config['hidden_size'] // heads`: FloorDiv -> Div"): "hidden_size is a multiple of "
    "the head count in a config that loads: the same number, as a float",
    ("bench", "held_check: `0`: 0 -> 1 (#2)"): "the default of completed for a point with figures: summarize always "
    "records completed",
    ("bench", "efficiency_row: `decode > bound`: Gt -> GtE"): EXACT + "; and it only words the note",
    ("bench", "_baseline_points: `p['output_throughput'] > 0`: Gt -> GtE"): "a baseline figure of 0 is then kept, but "
    "regression_check compares only against a non-zero one (``before and ...``)",
    **{("verdicts", description): WORDING for description in (
        "config_verdict: `', '.join(repair.get('repaired') or []) or t('word.none')`: and <-> or",
        "config_verdict: `repair.get('repaired') or []`: and <-> or",
        "qat_forward_verdict: `check.get('reason') or t('why.no_values', names='qat_forward_check')`: and <-> or",
        "layers_verdict: `layers.get('points') or []`: and <-> or",
        "baseline_verdict: `dig(baseline, 'platform', 'device', default='?')`: swap first two arguments",
        "accelerator_verdict: `ran_on`: negate condition",
        "accelerator_verdict: `'why.accelerator_unused' if _present(env, check) else 'why.no_accel...`: negate "
        "condition",
        "accelerator_verdict: `_present(env, check)`: swap first two arguments",
        "serve_verdict: `serve.get('reason') or t('word.no_reason')`: and <-> or",
        "bench_held_verdict: `held.get('reason') or bench.get('reason') or t('word.no_reason')`: and <-> or",
        "bench_regression_verdict: `regression.get('reason') or t('word.no_reason')`: and <-> or",
        "accuracy_verdict: `check.get('reason') or accuracy.get('reason') or t('word.no_reason')`: and <-> or",
    )},
}  # fmt: skip

# --- the mutations ------------------------------------------------------------------------------------------------

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}  # fmt: skip
COMPARE_SWAP = {
    ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt), ast.Gt: (ast.GtE, ast.LtE), ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,), ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}  # fmt: skip
NAME_SWAP = {"min": "max", "max": "min", "any": "all", "all": "any"}
ATTRIBUTE_SWAP = {"mean": "median", "median": "mean", "max": "min", "min": "max", "argmax": "argmin"}
DROP_CALL = {"sqrt", "square", "abs", "exp"}  # f(x) -> x
WORDS = {"passed": "failed", "failed": "passed", "ok": "failed", "not measured": "passed", "not run": "ok",
         "measured": "not measured", "timed out": "ok", "✅": "❌", "❌": "✅", "⚠": "✅"}  # fmt: skip
# Calls whose arguments only word a message.
QUIET_CALLS = {"t", "join", "text", "code", "Md", "NpuportError", "ValueError", "TypeError", "KeyError"}
QUIET_OWNERS = {"log", "logging"}


def _float_mutant(value: float) -> float:
    if 0.5 < value < 1:  # a percentile or a probability: 0.99 -> 0.95, 0.999 -> 0.995, 0.8 -> 0.0
        return round(1 - (1 - value) * 5, 12)
    return value * 2 if value else 1.0


def _quiet(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr | ast.Raise | ast.Assert):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in QUIET_CALLS:
            return True
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in QUIET_OWNERS:
            return True
    return False


@dataclass
class Site:
    """One mutation: where (a node of a fresh parse, found by walk order) and what it does."""

    index: int  # walk-order index of the node in the module's AST
    variant: int
    scope: str
    description: str
    line: int


def _in_scope(tree: ast.Module, scope: tuple[str, ...]) -> Iterator[tuple[str, ast.AST]]:
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        else:
            continue
        if "*" in scope or name in scope:
            yield name, node


def _skipped_children(node: ast.AST) -> set[int]:
    """Parts of a node that are not code to mutate: annotations, docstrings, decorators, dict keys, subscripts by
    name (field names), keyword names."""
    skip: set[int] = set()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
            if arg.annotation is not None:
                skip.add(id(arg.annotation))
        if node.returns is not None:
            skip.add(id(node.returns))
        skip.update(id(d) for d in node.decorator_list)
        # defaults stay mutable: a default ratio or alpha is part of the verdict
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            skip.add(id(first))
    if isinstance(node, ast.ClassDef):
        skip.update(id(d) for d in node.decorator_list)
        skip.update(id(b) for b in node.bases)
    if isinstance(node, ast.AnnAssign):
        skip.add(id(node.annotation))
    if isinstance(node, ast.Dict):
        skip.update(id(k) for k in node.keys if isinstance(k, ast.Constant))
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        skip.add(id(node.slice))
    return skip


def _walk(root: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``root`` that may be mutated, in a fixed order (quiet subtrees left out)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if _quiet(node):
            continue
        yield node
        skip = _skipped_children(node)
        children = [c for c in ast.iter_child_nodes(node) if id(c) not in skip]
        stack.extend(reversed(children))


def _variants(node: ast.AST) -> list[tuple[str, object]]:
    """(what it does, how) for each mutation of ``node``; ``how`` is applied by ``_apply``."""
    found: list[tuple[str, object]] = []
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in BINOP_SWAP:
        found.append((f"{type(node.op).__name__} -> {BINOP_SWAP[type(node.op)].__name__}", ("op",)))
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAP.get(type(op), ()):
                found.append((f"{type(op).__name__} -> {new.__name__}", ("cmp", i, new)))
    if isinstance(node, ast.BoolOp):
        found.append(("and <-> or", ("boolop",)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        found.append((f"drop {type(node.op).__name__}", ("unary",)))
    if isinstance(node, ast.If | ast.IfExp | ast.While) and not (
        isinstance(node.test, ast.Compare) or (isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not))
    ):
        found.append(("negate condition", ("negate",)))
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            found.append((f"{value} -> {not value}", ("const", not value)))
        elif isinstance(value, int):
            found.append((f"{value} -> {value + 1}", ("const", value + 1)))
        elif isinstance(value, float):
            found.append((f"{value!r} -> {_float_mutant(value)!r}", ("const", _float_mutant(value))))
        elif isinstance(value, str) and value in WORDS:
            found.append((f"{value!r} -> {WORDS[value]!r}", ("const", WORDS[value])))
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in NAME_SWAP:
            found.append((f"{func.id} -> {NAME_SWAP[func.id]}", ("name", NAME_SWAP[func.id])))
        if isinstance(func, ast.Attribute) and func.attr in ATTRIBUTE_SWAP:
            found.append((f".{func.attr} -> .{ATTRIBUTE_SWAP[func.attr]}", ("attr", ATTRIBUTE_SWAP[func.attr])))
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called in DROP_CALL and len(node.args) == 1 and not node.keywords:
            found.append((f"{called}(x) -> x", ("drop_call",)))
        if len(node.args) >= 2 and not any(isinstance(a, ast.Starred) for a in node.args[:2]):
            found.append(("swap first two arguments", ("swap_args",)))
        if len(node.keywords) >= 2 and all(k.arg for k in node.keywords[:2]):
            found.append((f"swap {node.keywords[0].arg}= and {node.keywords[1].arg}=", ("swap_keywords",)))
    if isinstance(node, ast.Dict) and len(node.values) >= 2 and all(k is not None for k in node.keys[:2]):
        found.append(("swap the first two dict values", ("swap_dict",)))
    return found


def _apply(node: ast.AST, how: tuple) -> ast.AST:
    """The mutated replacement of ``node`` (may be ``node`` itself, edited)."""
    kind = how[0]
    if kind == "op":
        node.op = BINOP_SWAP[type(node.op)]()
    elif kind == "cmp":
        node.ops[how[1]] = how[2]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "unary":
        return node.operand
    elif kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind == "const":
        node.value = how[1]
    elif kind == "name":
        node.func.id = how[1]
    elif kind == "attr":
        node.func.attr = how[1]
    elif kind == "drop_call":
        return node.args[0]
    elif kind == "swap_args":
        node.args[0], node.args[1] = node.args[1], node.args[0]
    elif kind == "swap_keywords":
        node.keywords[0].value, node.keywords[1].value = node.keywords[1].value, node.keywords[0].value
    elif kind == "swap_dict":
        node.values[0], node.values[1] = node.values[1], node.values[0]
    return node


def _numbered(tree: ast.Module, scope: tuple[str, ...]) -> Iterator[tuple[int, str, ast.AST]]:
    index = 0
    for name, top in _in_scope(tree, scope):
        for node in _walk(top):
            yield index, name, node
            index += 1


def sites(source: str, target: Target) -> list[Site]:
    tree = ast.parse(source)
    found: list[Site] = []
    seen: dict[str, int] = {}
    for index, name, node in _numbered(tree, target.scope):
        for variant, (what, _how) in enumerate(_variants(node)):
            before = ast.unparse(node) if not isinstance(node, ast.If | ast.While) else ast.unparse(node.test)
            before = " ".join(before.split())
            shown = before if len(before) <= 70 else before[:67] + "..."
            description = f"{name}: `{shown}`: {what}"
            seen[description] = seen.get(description, 0) + 1
            if seen[description] > 1:  # the same edit of the same text again in that function: numbered
                description += f" (#{seen[description]})"
            found.append(Site(index, variant, name, description, getattr(node, "lineno", 0)))
    return found


def mutated_source(source: str, target: Target, site: Site) -> ast.Module:
    tree = ast.parse(source)
    parents: dict[int, tuple[ast.AST, str, int | None]] = {}
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        parents[id(item)] = (parent, name, i)
            elif isinstance(value, ast.AST):
                parents[id(value)] = (parent, name, None)
    for index, _name, node in _numbered(tree, target.scope):
        if index != site.index:
            continue
        _what, how = _variants(node)[site.variant]
        replacement = _apply(node, how)
        if replacement is not node:
            parent, name, i = parents[id(node)]
            if i is None:
                setattr(parent, name, replacement)
            else:
                getattr(parent, name)[i] = replacement
        return ast.fix_missing_locations(tree)
    raise LookupError(site.description)


# --- running ------------------------------------------------------------------------------------------------------


class _Mutated(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``code`` (compiled under the real file name) for ``module``; every other import as usual."""

    def __init__(self, module: str, path: Path, code):
        self.module, self.path, self.code = module, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)  # noqa: S102 - the mutant under test


def _module_path(module: str) -> Path:
    return SRC / Path(*module.split(".")).with_suffix(".py")


def _test_args(target: Target) -> list[str]:
    args, skip_next = [], False
    for arg in target.tests:
        if skip_next:
            args.append(arg)
            skip_next = False
        elif arg.startswith("-"):
            args.append(arg)
            skip_next = arg in ("-k", "-m")
        elif (REPO / arg.split("::")[0]).exists():
            args.append(arg)
    return args


def _has_tests(args: list[str]) -> bool:
    return any(not a.startswith("-") and a.startswith("tests/") for a in args)


def run_child(
    target: Target, args: list[str], tree: ast.Module | None, timeout: float, log: Path | None
) -> tuple[str, float]:
    """Fork; the child runs pytest with ``args`` against ``tree`` (None: the module as it is). Returns
    ("passed" | "failed" | "timeout", seconds)."""
    if not _has_tests(args):
        return "passed", 0.0  # no test reaches the module: every mutant survives
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.chdir(REPO)
            sink = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(sink, 1)
            os.dup2(sink, 2)
            sys.dont_write_bytecode = True
            if tree is not None:
                path = _module_path(target.module)
                sys.meta_path.insert(0, _Mutated(target.module, path, compile(tree, str(path), "exec")))
            import pytest

            code = pytest.main([*args, *FAST, "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--no-header",
                                "-W", "ignore"])  # fmt: skip
            os._exit(0 if code == 0 else 1)
        except BaseException:  # noqa: BLE001 - any failure of the child kills the mutant
            os._exit(3)
    deadline = started + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return ("passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"), time.monotonic() - started
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - started
        time.sleep(0.02)


def preload() -> None:
    """Import what the tests import, once, in the process every child forks from (never npuport itself)."""
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.stats  # noqa: F401
    import torch  # noqa: F401
    import yaml  # noqa: F401

    for optional in ("transformers", "safetensors.torch", "markdown_it", "matplotlib.pyplot", "hypothesis"):
        try:
            importlib.import_module(optional)
        except ImportError:
            pass
    if "npuport" in sys.modules:
        raise RuntimeError("npuport was imported before the fork: the mutants would not be loaded")


@dataclass
class Outcome:
    name: str
    total: int = 0
    killed: int = 0
    timeouts: int = 0
    harmless: list[tuple[Site, str]] = field(default_factory=list)
    survivors: list[Site] = field(default_factory=list)
    seconds: float = 0.0
    broken: bool = False  # the tests fail on the unmutated module, or the tree kept changing: no count

    @property
    def effective(self) -> int:
        return self.total - len(self.harmless)


class Changed(Exception):
    """The library or a test file changed while a module's mutants ran (someone edits the tree): the snapshot the
    mutants were made from, or the tests they ran, are no longer what is there."""


def fingerprint(target: Target, args: list[str]) -> str:
    """A hash of the mutated module and of the test files in ``args`` (a change elsewhere that breaks the tests is
    found by the clean run repeated every ``RECHECK`` mutants)."""
    digest = hashlib.sha256()
    files = [_module_path(target.module), REPO / "tests" / "conftest.py"]
    files += sorted({REPO / a.split("::")[0] for a in args if a.startswith("tests/")})
    for path in files:
        digest.update(str(path).encode())
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()


def run_module(name: str, target: Target, *, timeout: float | None, verbose: bool, log_dir: Path | None) -> Outcome:
    """The module's mutants; started again (at most twice) when the tree changes under the run."""
    for attempt in range(3):
        try:
            return _run_module(name, target, timeout=timeout, verbose=verbose, log_dir=log_dir)
        except Changed as changed:
            print(f"{name}: {changed}; starting the module again ({attempt + 1})", flush=True)
    outcome = Outcome(name)
    outcome.broken = True
    return outcome


def _run_module(name: str, target: Target, *, timeout: float | None, verbose: bool, log_dir: Path | None) -> Outcome:
    args = _test_args(target)  # the test files as they are now, the same for every mutant
    before = fingerprint(target, args)
    source = _module_path(target.module).read_text(encoding="utf-8")
    found = sites(source, target)
    outcome = Outcome(name, total=len(found))
    started = time.monotonic()
    print(f"{name}: {len(found)} mutants of {target.module}; pytest {' '.join(args) or '(no test file)'}", flush=True)
    baseline, seconds = run_child(target, args, None, 600, log_dir / f"{name}-baseline.log" if log_dir else None)
    if baseline != "passed" and _has_tests(args):
        print(f"{name}: the fast tests fail without any mutant ({baseline}): module not run", flush=True)
        outcome.broken = True
        return outcome
    limit = timeout or max(30.0, 4 * seconds + 10)
    for n, site in enumerate(found, 1):
        tree = mutated_source(source, target, site)
        log = log_dir / f"{name}-{n:04d}.log" if log_dir else None
        result, _ = run_child(target, args, tree, limit, log)
        if fingerprint(target, args) != before:
            raise Changed(f"the module or its tests changed after {n} of {len(found)} mutants")
        if n % RECHECK == 0 and run_child(target, args, None, 600, None)[0] != "passed" and _has_tests(args):
            raise Changed(f"the tests fail without a mutant after {n} of {len(found)} mutants")
        if result == "failed":
            outcome.killed += 1
        elif result == "timeout":
            outcome.killed += 1
            outcome.timeouts += 1
        elif (name, site.description) in HARMLESS:
            outcome.harmless.append((site, HARMLESS[(name, site.description)]))
        else:
            outcome.survivors.append(site)
        if verbose:
            print(f"  [{name} {n}/{len(found)}] {result:8s} line {site.line}: {site.description}", flush=True)
    outcome.seconds = time.monotonic() - started
    return outcome


def table(outcomes: list[Outcome]) -> str:
    head = ("module", "mutants", "killed", "(timeouts)", "survived", "harmless", "verdict-changing survivors",
            "share", "seconds")  # fmt: skip
    rows = []
    for o in outcomes:
        if o.broken:
            rows.append((o.name, o.total, "-", "-", "-", "-", "-", "the tests fail without a mutant", "-"))
            continue
        changing = len(o.survivors)
        share = f"{100 * changing / o.effective:.1f} %" if o.effective else "-"
        rows.append((o.name, o.total, o.killed, o.timeouts, changing + len(o.harmless), len(o.harmless),
                     changing, share, f"{o.seconds:.0f}"))  # fmt: skip
    total = Outcome("total")
    for o in outcomes:
        if o.broken:
            continue
        total.total += o.total
        total.killed += o.killed
        total.timeouts += o.timeouts
        total.harmless += o.harmless
        total.survivors += o.survivors
        total.seconds += o.seconds
    if len(outcomes) > 1:
        changing = len(total.survivors)
        share = f"{100 * changing / total.effective:.1f} %" if total.effective else "-"
        rows.append(("total", total.total, total.killed, total.timeouts, changing + len(total.harmless),
                     len(total.harmless), changing, share, f"{total.seconds:.0f}"))  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", nargs="+", choices=sorted(MODULES), default=sorted(MODULES))
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--survivors", action="store_true", help="print every survivor (the harmless ones too)")
    parser.add_argument("--verbose", action="store_true", help="one line per mutant as it runs")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 4 x the clean run + 10, >= 30)")
    parser.add_argument("--logs", type=Path, help="keep each child's pytest output in this directory")
    parser.add_argument("--replay", type=Path, help="tabulate a saved --verbose run again (with HARMLESS as it is "
                        "now) instead of running anything")  # fmt: skip
    parser.add_argument("--tests", nargs="+", help="pytest arguments instead of each module's own (e.g. a count "
                        "before new tests: the old test files only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        for name in args.module:
            target = MODULES[name]
            for site in sites(_module_path(target.module).read_text(encoding="utf-8"), target):
                print(f"{name}\tline {site.line}\t{site.description}")
        return 0
    if args.replay:
        outcomes = replay(args.replay.read_text(encoding="utf-8"), args.module)
        print(table(outcomes))
        _print_survivors(outcomes, args.survivors)
        return 0
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    preload()
    outcomes = []
    for name in args.module:
        target = MODULES[name]
        if args.tests:
            target = Target(target.module, target.scope, tuple(args.tests))
        outcome = run_module(name, target, timeout=args.timeout, verbose=args.verbose, log_dir=args.logs)
        outcomes.append(outcome)
        print(f"{name}: {outcome.killed}/{outcome.total} killed, {len(outcome.survivors)} verdict-changing "
              f"survivors, {len(outcome.harmless)} harmless ({outcome.seconds:.0f} s)", flush=True)  # fmt: skip
    print()
    print(table(outcomes))
    _print_survivors(outcomes, args.survivors)
    return 1 if any(o.broken for o in outcomes) else 0


def _print_survivors(outcomes: list[Outcome], wanted: bool) -> None:
    if not wanted:
        return
    for o in outcomes:
        for site in o.survivors:
            print(f"SURVIVED {o.name} line {site.line}: {site.description}")
        for site, why in o.harmless:
            print(f"harmless {o.name} line {site.line}: {site.description} ({why})")


VERBOSE_LINE = re.compile(r"^  \[(\w+) (\d+)/(\d+)\] (\w+) +line (\d+): (.*)$")


def replay(log: str, modules: list[str]) -> list[Outcome]:
    """The outcomes a saved ``--verbose`` run printed (the last complete run of each module in it)."""
    runs: dict[str, dict[int, tuple[str, Site]]] = {}
    totals: dict[str, int] = {}
    for line in log.splitlines():
        match = VERBOSE_LINE.match(line)
        if not match or match[1] not in modules:
            continue
        name, n, total = match[1], int(match[2]), int(match[3])
        if n == 1:
            runs[name] = {}
        totals[name] = total
        runs[name][n] = (match[4], Site(n, 0, "", match[6], int(match[5])))
    outcomes = []
    for name in modules:
        if name not in runs or len(runs[name]) != totals[name]:
            continue
        outcome = Outcome(name, total=totals[name])
        for result, site in runs[name].values():
            if result in ("failed", "timeout"):
                outcome.killed += 1
                outcome.timeouts += result == "timeout"
            elif (name, site.description) in HARMLESS:
                outcome.harmless.append((site, HARMLESS[(name, site.description)]))
            else:
                outcome.survivors.append(site)
        outcomes.append(outcome)
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
