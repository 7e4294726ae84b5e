"""The report stage: reports rendered from artifact sets and parsed back with markdown-it-py.

The base set (tests/data/artifacts/tiny-bitcpm) is a real run; every other case edits a copy of it.
Expected values are read from the artifacts, never typed in.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import string
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from npuport.compare import compare as compare_stage
from npuport.compare.gates import GATE_NAMES, gate_checks
from npuport.engines.records import document
from npuport.env.env_probe import diagnose
from npuport.env.npu_smi import parse_npu_smi_info
from npuport.report.mdtext import NEWLINE_MARK, code, fence, table, text
from npuport.report.messages import TEMPLATE_DIR, Messages
from npuport.report.paths import ReportInputs
from npuport.report.pipeline_cost import stage_costs
from npuport.report.report_index import write_index
from npuport.report.report_model import write_report
from npuport.report.verdicts import (
    FAILED,
    NOT_MEASURED,
    PASSED,
    accelerator_verdict,
    format_value,
)

DATA = Path(__file__).resolve().parent / "data"
REPORT_PACKAGE = Path(__file__).resolve().parents[1] / "src" / "npuport" / "report"
BASE = DATA / "artifacts" / "tiny-bitcpm"
MODEL = "tiny-bitcpm"
# The stages whose benchmark files and outputs the report_model rule declares, in pipeline order.
STAGES = (
    "download",
    "introspect",
    "repair_config",
    "fuse",
    "env_probe",
    "smoke",
    "baseline",
    "compare",
    "layers",
    "bench",
    "accuracy_reference",
    "accuracy",
)
NPU_SMI = DATA / "npu-smi" / "910b3-8npu-vllm-ascend-3024.txt"
NASTY = (
    "| a | b |\n# heading\n<script>alert(1)</script> *bold* _it_ `tick` ```fence``` [x](javascript:y) "
    "![i](z) &amp; \\ back\r\n- item\n1. one ~~del~~ <b>b</b> $m$ |"
)
CATALOG = {lang: yaml.safe_load((TEMPLATE_DIR / f"messages.{lang}.yaml").read_text("utf-8")) for lang in ("en", "zh")}
MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


# -- helpers: artifact sets and a small Markdown reader ----------------------------------------------------------


def load(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text(encoding="utf-8"))


def save(directory: Path, name: str, doc: dict) -> None:
    (directory / name).write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")


def artifact_set(tmp_path: Path) -> Path:
    """A copy of the base set at tmp_path/results/tiny-bitcpm, to edit, with the figures of the last report as the
    report stage finds them on a rerun: the base set's, drawn once per test process (a render draws again those whose
    data its test changed, and keeps the others: npuport.report.plots)."""
    target = tmp_path / "results" / MODEL
    shutil.copytree(BASE, target)
    shutil.copytree(base_plots(tmp_path.parent), target / "plots")
    return target


def base_plots(session_dir: Path) -> Path:
    """The base set's figures, drawn by a render of it in ``session_dir`` (pytest's directory of this process) once."""
    directory = session_dir / "base-set-plots" / MODEL
    if not (directory / "report.md").is_file():
        shutil.rmtree(directory.parent, ignore_errors=True)
        shutil.copytree(BASE, directory)
        render(directory)
    return directory / "plots"


def declared_inputs(directory: Path) -> dict:
    """The report_model rule's inputs for artifacts in ``directory``, as snakemake.input hands them over."""
    files = (
        "download",
        "introspect.json",
        "config.json",
        "repair.json",
        "model",
        "env.json",
        "smoke.json",
        "baseline.json",
        "compare.json",
        "layers.json",
        "bench.json",
        "accuracy.json",
    )
    declared = {name.removesuffix(".json"): str(directory / name) for name in files}
    return declared | {"benchmarks": [str(directory / "benchmarks" / f"{stage}.tsv") for stage in STAGES]}


def declared_outputs(directory: Path) -> dict:
    return {"report": directory / "report.md", "plots": directory / "plots", "summary": directory / "report.json"}


def stage_targets(directory: Path) -> list[tuple[str, str]]:
    """(artifact, rule) per stage output, as the rule's params give them, and the report's own row (the script's)."""
    inputs = declared_inputs(directory)
    rules = {"config": "repair_config", "repair": "repair_config", "model": "fuse", "env": "env_probe"}
    targets = [(inputs[name], rules.get(name, name)) for name in inputs if name != "benchmarks"]
    return targets + [(str(directory / "report.md"), "report_model")]


def render(directory: Path, language: str = "en") -> tuple[str, Report]:
    markdown = write_report(
        MODEL,
        inputs=declared_inputs(directory),
        outputs=declared_outputs(directory),
        language=language,
        stage_targets=stage_targets(directory),
    )
    assert (directory / "report.md").read_text(encoding="utf-8") == markdown
    return markdown, Report(markdown)


def inline_text(token) -> str:
    """The text a reader sees in an inline token (emphasis markers dropped, code spans as their content)."""
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "html_inline":
            parts.append(f"<<HTML {child.content}>>")
    return "".join(parts)


class Report:
    """Headings, tables and fenced blocks of a rendered report, grouped by their ## section."""

    def __init__(self, markdown: str):
        self.markdown = markdown
        self.tokens = MD.parse(markdown)
        self.html = MD.render(markdown)
        self.h1, self.h2, self.h3 = [], [], []
        self.tables: list[tuple[str, list[list[str]]]] = []  # (section, rows incl. header)
        self.fences: list[tuple[str, str]] = []
        section, row, rows = "", None, None
        tokens = self.tokens
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open":
                title = inline_text(tokens[i + 1])
                {"h1": self.h1, "h2": self.h2, "h3": self.h3}[tok.tag].append(title)
                section = title if tok.tag == "h2" else section
            elif tok.type == "table_open":
                rows = []
            elif tok.type == "tr_open":
                row = []
            elif tok.type in ("td_open", "th_open"):
                row.append(inline_text(tokens[i + 1]))
            elif tok.type == "tr_close":
                rows.append(row)
            elif tok.type == "table_close":
                self.tables.append((section, rows))
            elif tok.type == "fence":
                self.fences.append((section, tok.content))

    def section_tables(self, number: int) -> list[list[list[str]]]:
        return [rows for section, rows in self.tables if section.startswith(f"{number}. ")]

    def table_with(self, number: int, header_cell: str) -> list[dict[str, str]]:
        """The first table of section ``number`` whose header has ``header_cell``, as dicts by header."""
        for rows in self.section_tables(number):
            if header_cell in rows[0]:
                return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
        raise AssertionError(f"no table with column {header_cell!r} in section {number}: {self.section_tables(number)}")

    def html_tokens(self) -> list:
        found = []
        for tok in self.tokens:
            found += [tok] if tok.type.startswith("html") else []
            found += [c for c in tok.children or [] if c.type.startswith("html")]
        return found


def number(cell: str) -> float:
    """The first number in a cell ('1,234.5 tok/s (65 tok / 0.166 s)' -> 1234.5)."""
    match = re.search(r"-?[\d,]*\.?\d+(?:e[-+]?\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


def close(shown: float, value: float, significant: int = 3, decimals: int | None = None) -> bool:
    """``shown`` is ``value`` as the report prints it: rounded to ``significant`` digits (off by at most half a
    unit of the last one), or, in a cell with a fixed number of ``decimals`` (Formatter.num prints 0.0383 s as
    "0.038 s"), to those where that is coarser."""
    exponent = math.floor(math.log10(abs(value))) if value else None
    half_unit = 0.0 if exponent is None else 0.5 * 10 ** (exponent + 1 - significant)
    if decimals is not None:
        half_unit = max(half_unit, 0.5 * 10**-decimals)
    return abs(shown - value) <= half_unit * (1 + 1e-9)


def label(language: str, key: str) -> str:
    return CATALOG[language][key]


def conclusion(report: Report, language: str = "en") -> dict[str, str]:
    """Check label -> result cell of the conclusion table."""
    rows = report.table_with(9, label(language, "col.check"))
    return {r[label(language, "col.check")]: r[label(language, "col.result")] for r in rows}


def check_label(language: str, check: str) -> str:
    """A conclusion row's label as the reader sees it: a gate's and a fixed threshold's from their metric."""
    if check in GATE_NAMES:
        return label(language, "check.gate").format(gate=label(language, f"gate.{check}"))
    if f"check.{check}" in CATALOG[language]:
        return label(language, f"check.{check}").replace("`", "")
    return label(language, "check.threshold").format(gate=label(language, f"gate.{check}"))


# What a reader sees in a result cell, written out (not the code's own SYMBOLS): a swap there must fail these tests.
CELL_SYMBOLS = {"✅": "passed", "❌": "failed", "⚠": "not measured"}


def row_status(report: Report, check: str, language: str = "en") -> str:
    cell = conclusion(report, language)[check_label(language, check)]
    return next(status for symbol, status in CELL_SYMBOLS.items() if cell.startswith(symbol))


def row_detail(report: Report, check: str, language: str = "en") -> str:
    rows = report.table_with(9, label(language, "col.check"))
    return next(
        r[label(language, "col.measured")]
        for r in rows
        if r[label(language, "col.check")] == check_label(language, check)
    )


@pytest.fixture
def real(tmp_path):
    directory = artifact_set(tmp_path)
    markdown, report = render(directory)
    return directory, report


# -- the real set ------------------------------------------------------------------------------------------------


def test_all_numbered_sections_in_order(real):
    _, report = real
    assert len(report.h1) == 1 and MODEL in report.h1[0]
    numbered = [h for h in report.h2 if re.match(r"\d+\. ", h)]
    assert numbered == [f"{i}. {label('en', f's{i}')}" for i in range(1, 12)]


def test_every_table_row_has_as_many_cells_as_its_header(real):
    _, report = real
    assert len(report.tables) >= 15
    for section, rows in report.tables:
        assert len(rows) >= 2, (section, rows)
    # markdown-it pads or cuts rows; the raw lines must already agree (no unescaped | from artifact text)
    for block in re.findall(r"(?:^\|.*\|\n)+", report.markdown, re.M):
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(widths) == 1, block


def test_architecture_numbers_equal_the_artifacts(real):
    directory, report = real
    derived = load(directory, "introspect.json")["derived"]
    facts = {r[label("en", "col.property")]: r[label("en", "col.value")] for r in report.table_with(1, "Property")}
    assert number(facts[label("en", "arch.parameters")]) == derived["parameter_count"]
    assert number(facts[label("en", "arch.vocab")]) == derived["vocab_size"]
    fields = {r["Field"]: r for r in report.table_with(1, "Field")}
    for row in load(directory, "repair.json")["fields"]:
        shown = fields[row["field"]]
        status = {"ok": "✅", "repaired": "❌", "not derivable": "⚠"}[row["status"]]
        assert shown["Status"].startswith(status)
        if isinstance(row["derived"], int) and not isinstance(row["derived"], bool):
            assert number(shown["Derived from weights"]) == row["derived"]
        if isinstance(row["declared"], int) and not isinstance(row["declared"], bool):
            assert number(shown["Declared (downloaded config)"]) == row["declared"]


def test_tokenizer_check_of_repair_is_reported(real, tmp_path):
    directory, report = real
    tokenizer = load(directory, "repair.json")["tokenizer"]
    expected = label("en", "s3.tokenizer").format(
        cls=tokenizer["class"], tokens=tokenizer["tokens"], rows=tokenizer["embedding_rows"]
    )
    assert expected in report.markdown
    older = artifact_set(tmp_path / "older")  # a repair.json from before the check moved there
    repair = load(older, "repair.json")
    del repair["tokenizer"]
    save(older, "repair.json", repair)
    assert "The tokenizer loads as" not in render(older)[0]


def test_files_left_out_by_the_fold_are_listed(tmp_path):
    directory = artifact_set(tmp_path)
    fuse = load(directory / "model", "fuse.json")
    # the embedded model's bundled QAT code is left out of the fused (plain Llama) model dir
    assert fuse.get("side_files_left_out") == ["modeling_bitcpm.py"]
    rows = {r[label("en", "col.item")]: r for r in render(directory)[1].table_with(3, label("en", "col.item"))}
    assert "modeling_bitcpm.py" in rows[label("en", "fuse.side_files_left_out")][label("en", "col.value")]
    save(directory / "model", "fuse.json", fuse | {"side_files_left_out": []})
    assert label("en", "fuse.side_files_left_out") not in render(directory)[0]
    save(directory / "model", "fuse.json", fuse | {"side_files_left_out": ["configuration_minicpm.py"]})
    rows = {r[label("en", "col.item")]: r for r in render(directory)[1].table_with(3, label("en", "col.item"))}
    assert "configuration_minicpm.py" in rows[label("en", "fuse.side_files_left_out")][label("en", "col.value")]


def test_outputs_and_performance_equal_the_artifacts(real):
    directory, report = real
    smoke, base = load(directory, "smoke.json"), load(directory, "baseline.json")
    outputs = report.table_with(4, label("en", "col.output"))
    assert len(outputs) == len(smoke["prompts"])
    for shown, record in zip(outputs, smoke["prompts"], strict=True):
        assert shown[label("en", "col.output")] == record["text"].strip()
        assert number(shown[label("en", "col.tokens")]) == record["num_tokens"]
        assert close(number(shown[label("en", "col.time")]), record["latency_s"], decimals=3)
    assert [body for _, body in report.fences if body.rstrip("\n") in {r["text"] for r in smoke["prompts"]}]
    perf = {r[label("en", "col.metric")]: r for r in report.table_with(5, label("en", "col.engine"))}
    load_row = perf[label("en", "perf.load")]
    assert close(number(load_row[label("en", "col.engine")]), smoke["load_seconds"], decimals=3)
    assert close(number(load_row[label("en", "col.baseline")]), base["load_seconds"], decimals=3)
    single = perf[label("en", "perf.single")][label("en", "col.engine")]
    assert close(number(single), smoke["throughput"]["single"]["tokens_per_s"], decimals=3)
    assert f"({smoke['throughput']['single']['tokens']} tok" in single
    ttft = sum(p["ttft_s"] for p in smoke["prompts"]) / len(smoke["prompts"])
    assert close(number(perf[label("en", "perf.ttft")][label("en", "col.engine")]), ttft * 1000, decimals=3)
    kv = perf[label("en", "perf.kv")][label("en", "col.engine")]
    assert number(kv) == smoke["kv_cache"]["tokens"]


def test_comparison_and_thresholds_equal_the_artifacts(real):
    directory, report = real
    compare = load(directory, "compare.json")
    rows = report.table_with(5, label("en", "col.classification"))
    assert len(rows) == len(compare["prompts"])
    for shown, p in zip(rows, compare["prompts"], strict=True):
        assert number(shown[label("en", "col.compared")]) == p["compared"]
        assert number(shown[label("en", "col.matched")]) == p["matched"]
        assert close(number(shown[label("en", "col.mean_diff")]), p["teacher_forced"]["mean_abs_logprob_diff"], 4)
        assert close(number(shown[label("en", "col.max_diff")]), p["teacher_forced"]["max_abs_logprob_diff"], 4)
        assert close(number(shown[label("en", "col.kl")]), p["teacher_forced"]["mean_topk_kl"], 4)
        assert close(number(shown[label("en", "col.top1")]), p["teacher_forced"]["top1_agreement"], 4)
    checks = report.table_with(5, label("en", "col.threshold"))
    assert [c[label("en", "col.threshold")] for c in checks] == [c["threshold"] for c in compare["checks"]]
    for shown, check in zip(checks, compare["checks"], strict=True):
        assert close(number(shown[label("en", "col.gate_engine")]), check["value"], 4)
        assert shown[label("en", "col.limit")].startswith(check["op"])
        assert close(number(shown[label("en", "col.limit")]), check["limit"], 4)
        assert shown[label("en", "col.result")] == {True: "✅", False: "❌", None: "⚠"}[check["passed"]]
    statistics = {r[label("en", "col.statistic")]: r for r in report.table_with(5, label("en", "col.statistic"))}
    ppl = statistics[label("en", "stat.ppl_side")]
    assert close(number(ppl[label("en", "col.gate_engine")]), compare["overall"]["perplexity_engine"], 6)
    reference = statistics[label("en", "stat.ppl_reference")][label("en", "col.gate_engine")]
    assert close(number(reference), compare["overall"]["perplexity_reference"], 6)


def test_numbers_are_compared_at_the_printed_precision(real):
    """close() accepts what the report prints and rejects a value off by more than its last printed digit: the
    KL values (about 1e-9) must not pass whatever they are."""
    directory, report = real
    compare = load(directory, "compare.json")
    rows = report.table_with(5, label("en", "col.kl"))
    for shown, p in zip(rows, compare["prompts"], strict=True):
        kl, printed = p["teacher_forced"]["mean_topk_kl"], number(shown[label("en", "col.kl")])
        assert close(printed, kl, 4)
        assert not close(printed, kl * 1.002, 4) and not close(printed, kl * 0.998, 4)
        assert not close(printed, 0.0, 4) and not close(printed, kl * 10, 4)
    assert close(0.038, 0.03833, decimals=3) and close(0.038, 0.0384, decimals=3)  # "0.038 s"
    assert not close(0.038, 0.0386, decimals=3) and not close(0.038, 0.0374, decimals=3)
    assert close(97.66, 97.6571699712801, 4) and not close(97.66, 97.7, 4)


def test_pipeline_cost_table_equals_the_benchmark_files(real):
    directory, report = real
    rows = {r[label("en", "col.stage")]: r for r in report.table_with(10, label("en", "col.stage"))}
    for tsv in (directory / "benchmarks").glob("*.tsv"):
        header, values = tsv.read_text().splitlines()[:2]
        measured = dict(zip(header.split("\t"), values.split("\t"), strict=True))
        assert close(number(rows[tsv.stem][label("en", "col.wall")]), float(measured["s"]), decimals=3)
        assert close(number(rows[tsv.stem][label("en", "col.rss")]), float(measured["max_rss"]), decimals=3)


def test_conclusion_rows_follow_the_artifacts(real):
    directory, report = real
    smoke, compare = load(directory, "smoke.json"), load(directory, "compare.json")
    kept = (
        "config",
        "fusion",
        "qat_forward",
        "engine",
        "npu",
        "gpu",
        "serve",
        "baseline",
        "tokens",
        "layers",
        "bench_held",
        "bench_regression",
        "bench_capacity",
        "accuracy",
    )
    assert set(conclusion(report)) == {check_label("en", c) for c in kept + GATE_NAMES}
    assert row_status(report, "engine") == (PASSED if smoke["status"] == "ok" else FAILED)
    on_npu = smoke["platform"]["name"] == "npu"
    assert row_status(report, "npu") == (PASSED if on_npu else NOT_MEASURED)
    assert row_status(report, "gpu") == (PASSED if smoke["platform"]["name"] == "cuda" else NOT_MEASURED)
    assert row_status(report, "tokens") == (PASSED if compare["status"] == "passed" else FAILED)
    reasons = {r["Check"]: r[label("en", "col.measured")] for r in report.table_with(9, "Check")}
    if not on_npu:
        assert reasons[label("en", "check.npu")].startswith("no NPU on this host")
        assert smoke["platform"]["device"] in reasons[label("en", "check.npu")]
    for r in report.table_with(9, "Check"):
        assert r[label("en", "col.evidence")].split(":")[0].endswith(".json")
    summary = load(directory, "report.json")
    # the embedded model's run on a CPU host: every check passed; not measured are only the rows that cannot be
    # (no NPU, no GPU, no QAT code to run, no earlier bench.json, a bench.json of before the capacity search), none
    # of which holds the overall status back
    assert {c: row_status(report, c) for c in kept if row_status(report, c) != "passed"} == dict.fromkeys(
        ("npu", "gpu", "qat_forward", "bench_regression", "bench_capacity"), "not measured"
    )
    assert summary["status"] == "passed"
    assert sum(summary["counts"].values()) == len(summary["checks"]) == len(kept) + len(GATE_NAMES)


def test_plots_are_pngs_linked_relative_to_the_report(real):
    directory, report = real
    images = [c for tok in report.tokens for c in tok.children or [] if c.type == "image"]
    assert sorted(i.attrs["src"] for i in images) == [
        "plots/bench_latency.png",
        "plots/bench_throughput.png",
        "plots/kld_buckets.png",
        "plots/kld_cdf.png",
        "plots/layers_rel_l2.png",
        "plots/logprob_diff.png",
        "plots/speed.png",
    ]
    for image in images:
        assert (directory / image.attrs["src"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_figure_is_drawn_again_exactly_when_its_data_or_its_code_changed(tmp_path, monkeypatch):
    """A rerun of the report keeps the figures whose data and drawing code are those they were drawn from (the
    digest in the PNG), and draws the others: changed data, another plot module, a PNG that is not one of ours."""
    from npuport.report import plots

    directory = artifact_set(tmp_path)
    plots_dir = directory / "plots"
    drawn = []
    save_figure = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(path.name) or save_figure(figure, path))
    shutil.rmtree(plots_dir)
    render(directory)  # no previous figures: every one drawn
    first = {p.name: p.read_bytes() for p in plots_dir.glob("*.png")}
    assert sorted(drawn) == sorted(first) and len(first) == 7
    digests = {name: plots.drawn_from(plots_dir / name) for name in first}
    assert all(len(d or "") == 64 for d in digests.values()) and len(set(digests.values())) == 7
    drawn.clear()
    render(directory)  # nothing changed: nothing drawn, the same bytes
    assert drawn == [] and {p.name: p.read_bytes() for p in plots_dir.glob("*.png")} == first
    layers = load(directory, "layers.json")
    layers["points"][3]["engine"]["rel_l2"] *= 3
    save(directory, "layers.json", layers)
    (plots_dir / "speed.png").write_bytes(first["kld_cdf.png"])  # a PNG drawn from other data
    render(directory)
    assert sorted(drawn) == ["layers_rel_l2.png", "speed.png"]
    assert plots.drawn_from(plots_dir / "layers_rel_l2.png") not in (None, digests["layers_rel_l2.png"])
    assert (plots_dir / "speed.png").read_bytes() == first["speed.png"]  # drawn again from its own data
    drawn.clear()
    monkeypatch.setattr(plots, "_code_digest", lambda: "another plots module")
    render(directory)
    assert sorted(drawn) == sorted(first)


def test_report_names_the_commands_that_reproduce_each_artifact(real):
    _, report = real
    commands = report.table_with(3, label("en", "col.rule"))
    assert {r[label("en", "col.rule")] for r in commands} >= {"introspect", "fuse", "smoke", "compare", "report_model"}
    for r in commands:
        assert r[label("en", "col.command")] == f"snakemake --cores 4 {r[label('en', 'col.artifact')]}"
        assert r[label("en", "col.force")].endswith(f"--forcerun {r[label('en', 'col.rule')]}")
    serve = [body for section, body in report.fences if section.startswith("4. ")]
    assert serve[0].startswith("vllm serve ")


# -- the declared paths, and no other ------------------------------------------------------------------------------


def string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant in a module (f-string parts and docstrings included), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_report_code_builds_no_results_path():
    modules = sorted(REPORT_PACKAGE.rglob("*.py"))
    assert len(modules) > 10 and REPORT_PACKAGE / "sections" / "architecture.py" in modules
    found = [
        f"{p.relative_to(REPORT_PACKAGE)}:{line}: {value!r}" for p in modules for line, value in string_literals(p)
    ]
    assert [hit for hit in found if "results/" in hit.split(": ", 1)[1]] == []


def test_report_reads_and_names_only_the_paths_it_is_given(tmp_path, monkeypatch):
    """Artifacts under elsewhere/, not results/: every path the report shows is one it was given, and a file
    beside the artifacts that no input declares (an extra benchmark) is not read."""
    monkeypatch.chdir(tmp_path)
    directory = Path("elsewhere") / "run-1" / MODEL
    shutil.copytree(BASE, directory)
    shutil.copy(directory / "benchmarks" / "smoke.tsv", directory / "benchmarks" / "undeclared.tsv")
    markdown, report = render(directory)
    targets = stage_targets(directory)
    commands = report.table_with(3, label("en", "col.rule"))
    assert [(r[label("en", "col.artifact")], r[label("en", "col.rule")]) for r in commands] == targets
    given = {path for path, _ in targets}
    for r in commands:
        shown = re.findall(r"\S*/\S*", r[label("en", "col.command")] + " " + r[label("en", "col.force")])
        assert shown and set(shown) <= given, r
    files = {str(p) for p in ReportInputs.from_mapping(declared_inputs(directory)).artifact_files().values()}
    assert {r[label("en", "col.artifact")] for r in report.table_with(11, label("en", "col.artifact"))} == files
    stages = [r[label("en", "col.stage")] for r in report.table_with(10, label("en", "col.stage"))]
    recorded = [stage for stage in STAGES if (directory / "benchmarks" / f"{stage}.tsv").is_file()]
    assert stages[:-1] == recorded and "undeclared" not in markdown
    # no relative results/<model> path anywhere (the recorded smoke.json holds an absolute one: artifact text)
    assert re.findall(rf"(?<![\w/.-])results/{MODEL}", markdown) == [] and f"`{directory}/`" in markdown
    verification = [body for section, body in report.fences if section.startswith("8. ")]
    assert any(f"-n {directory}/report.md" in body for body in verification)
    assert not [body for body in verification if "--list-changes" in body]


# -- edited sets ---------------------------------------------------------------------------------------------------


def test_smoke_not_run_renders_not_measured_without_crashing(tmp_path):
    directory = artifact_set(tmp_path)
    smoke, base = load(directory, "smoke.json"), load(directory, "baseline.json")
    reason = "vLLM cannot be imported: ModuleNotFoundError: No module named 'vllm'"
    not_run = document(
        "smoke",
        "not run",
        reason,
        settings=smoke["settings"],
        vllm_serve_command=smoke["vllm_serve_command"],
        serve={"status": "not run", "reason": "the offline engine did not run"},
    )
    save(directory, "smoke.json", not_run)
    bench = load(directory, "bench.json")
    why = f"the offline engine did not run (smoke.json status 'not run': {reason})"
    save(directory, "bench.json", bench | {"status": "not run", "reason": why, "points": [],
                                           "serve": {"status": "not run", "reason": why},
                                           "held": {"status": "not measured", "reason": why}})  # fmt: skip
    save(
        directory,
        "compare.json",
        compare_stage.not_measured(not_run, base, load(directory, "compare.json")["settings"]),
    )
    markdown, report = render(directory)
    assert [h for h in report.h2 if re.match(r"\d+\. ", h)][8] == "9. Conclusion"
    for check in ("engine", "npu", "gpu", "serve", "tokens", *GATE_NAMES):
        assert row_status(report, check) == NOT_MEASURED, check
    reasons = {r["Check"]: r[label("en", "col.measured")] for r in report.table_with(9, "Check")}
    assert reason in reasons[label("en", "check.engine")]
    assert "compare.json says not measured" in reasons[label("en", "check.tokens")]
    assert row_status(report, "baseline") == PASSED
    assert not (directory / "plots" / "logprob_diff.png").exists()
    assert "logprob_diff.png" not in markdown and "kld_cdf.png" not in markdown
    assert row_status(report, "bench_held") == NOT_MEASURED and "bench_throughput.png" not in markdown
    assert load(directory, "report.json")["status"] == NOT_MEASURED  # nothing failed, but the engine never ran


def test_engine_failure_is_a_failed_row_with_its_log(tmp_path):
    directory = artifact_set(tmp_path)
    smoke, base = load(directory, "smoke.json"), load(directory, "baseline.json")
    failed = document(
        "smoke",
        "failed",
        "vLLM engine did not start: RuntimeError: out of memory",
        log_tail=["Traceback (most recent call last):", "RuntimeError: out of memory"],
        settings=smoke["settings"],
        engine=smoke["engine"],
    )
    save(directory, "smoke.json", failed)
    save(
        directory, "compare.json", compare_stage.not_measured(failed, base, load(directory, "compare.json")["settings"])
    )
    _, report = render(directory)
    assert row_status(report, "engine") == FAILED
    assert load(directory, "report.json")["status"] == FAILED
    assert any("RuntimeError: out of memory" in body for section, body in report.fences if section.startswith("4. "))
    assert any("smoke" in h and "failed" in h for h in report.h3 if h.startswith("6."))


@pytest.mark.parametrize("language", ["zh"])  # the English catalog: the accuracy rows' test
def test_bench_rows_follow_bench_json(tmp_path, language):
    """The regression gate: not measured without a baseline (overall status untouched), ❌ below min_ratio x an earlier
    run, ✅ at or above it; a ladder that lost requests fails the held row and the report."""
    from npuport.engines.bench import regression_check

    directory = artifact_set(tmp_path)
    bench = load(directory, "bench.json")
    _, report = render(directory, language)
    assert row_status(report, "bench_held", language) == PASSED
    assert row_status(report, "bench_regression", language) == NOT_MEASURED
    assert load(directory, "report.json")["status"] == PASSED  # no baseline: nothing to regress against
    assert "in128-out64-c16" in report.markdown
    faster = json.loads(json.dumps(bench))
    for point in faster["points"]:
        point["output_throughput"] *= 1.25  # the earlier run was 25 % faster
    min_ratio = bench["settings"]["bench"]["min_ratio"]
    save(directory, "bench.json", bench | {"regression": regression_check(bench["points"], faster,
                                                                          path="earlier/bench.json",
                                                                          min_ratio=min_ratio)})  # fmt: skip
    _, report = render(directory, language)
    assert row_status(report, "bench_regression", language) == FAILED
    assert "0.80" in row_detail(report, "bench_regression", language)
    assert load(directory, "report.json")["status"] == FAILED
    same = regression_check(bench["points"], bench, path="earlier/bench.json", min_ratio=min_ratio)
    save(directory, "bench.json", bench | {"regression": same})
    _, report = render(directory, language)
    assert row_status(report, "bench_regression", language) == PASSED
    lost = json.loads(json.dumps(bench))
    sent = lost["points"][2]["num_prompts"]
    lost["points"][2] |= {"status": "failed", "completed": sent - 3, "failed": 3, "reason": f"3 of {sent} failed"}
    not_ok = {"in128-out64-c16": f"3 of {sent} requests failed"}
    lost["held"] = {"status": "failed", "reason": "3 failed and 0 truncated request(s)", "failed_requests": 3,
                    "truncated_requests": 0, "points_not_ok": not_ok}  # fmt: skip
    save(directory, "bench.json", lost)
    _, report = render(directory, language)
    assert row_status(report, "bench_held", language) == FAILED
    assert "3 failed and 0 truncated" in row_detail(report, "bench_held", language)
    assert f"{sent - 3} / {sent} (3 failed)" in report.markdown


def with_capacity(bench: dict, meets_up_to: float, flaky: dict | None = None) -> dict:
    """bench.json with a capacity search over concurrency 1-8 whose objective holds up to ``meets_up_to`` (``flaky``:
    loads whose repeats answer as given), and every ladder point judged, with a steady window and /metrics, as
    npuport.engines.bench records them; the limits computed by the stage's own function."""
    from npuport.engines.bench import limits_document
    from npuport.engines.capacity import CapacitySettings, SloSettings, search

    slo = SloSettings.from_config({})

    def record(name: str, concurrency: int, met: bool) -> dict:
        return {"name": name, "concurrency": concurrency, "num_prompts": 2 * concurrency,
                "completed": 2 * concurrency, "goodput_req_s": 1.5 if met else 0.0,
                "objective": {"met": met, "reason": None if met else "TTFT p99 2500 ms > 2000 ms",
                              "ttft_ms": 120.0 if met else 2500.0, "tpot_ms": 15.0, "share_within": 1.0 if met else 0},
                "steady": {"window_s": 3.0, "requests": concurrency + 1, "output_throughput": 40.0,
                           "long_enough": concurrency < 4},
                "server_metrics": {"status": "measured", "kv_cache_usage": {"max": 0.1 * concurrency},
                                   "running": {"max": min(concurrency, 4)},
                                   "waiting": {"max": max(0, concurrency - 4)}, "preemptions": 0.0}}  # fmt: skip

    def run(value: float, repeat: int):
        met = flaky[value][repeat] if flaky and value in flaky else value <= meets_up_to
        return met, record(f"capacity-in128-out64-c{value:g}-{repeat + 1}", int(value), met)

    settings = CapacitySettings.from_config({"low": 1, "high": 8, "max_probes": 6, "repeats": 2})
    capacity = search(settings, run) | {"objective": slo.text(), "settings": settings.as_dict(),
                                        "lengths": {"input_len": 128, "output_len": 64}, "seconds": 42.0}  # fmt: skip
    doc = json.loads(json.dumps(bench))
    for point in doc["points"]:
        point |= {k: v for k, v in record(point["name"], point["concurrency"], True).items() if k != "name"}
        point["num_prompts"] = point["completed"]
    doc["settings"]["bench"]["slo"] = slo.as_dict()
    doc["capacity"] = capacity
    doc["limits"] = limits_document(doc["points"], capacity, max_num_seqs=4)
    return doc


@pytest.mark.parametrize("language", ["en", "zh"])
def test_capacity_is_measured_with_its_number_and_never_judged(tmp_path, language):
    """§9's capacity row is ✅ measured with the number the search found (or with "no load meets it"), and ⚠ not
    measured, leaving the overall status alone, when the repeats disagreed or no search ran; §5.6 shows the
    capacity, every probe run, the ladder's objective columns, the knee and the limit reached first, and the plot."""
    directory = artifact_set(tmp_path)
    bench = load(directory, "bench.json")
    t = Messages(language)
    _, report = render(directory, language)  # a bench.json of before the capacity search: not measured
    assert row_status(report, "bench_capacity", language) == NOT_MEASURED
    assert load(directory, "report.json")["status"] == PASSED
    save(directory, "bench.json", with_capacity(bench, meets_up_to=5))
    markdown, report = render(directory, language)
    cell = conclusion(report, language)[check_label(language, "bench_capacity")]
    assert cell == f"✅ {label(language, 'status.measured')}"
    assert row_status(report, "bench_capacity", language) == PASSED
    detail = row_detail(report, "bench_capacity", language)
    unit = label(language, "unit.concurrency")
    assert f"5 {unit}" in detail and "TTFT p99 ≤ 2000 ms, TPOT p99 ≤ 200 ms" in detail
    assert bench["platform"]["device"] in detail
    assert load(directory, "report.json")["status"] == PASSED
    probes = report.table_with(5, label(language, "col.capacity_load"))
    assert [r[label(language, "col.point")] for r in probes] == [
        f"capacity-in128-out64-c{c}-{i}" for c in (1, 2, 4, 8, 6, 5) for i in (1, 2)
    ]
    share, probe_load = label(language, "col.share_within"), label(language, "col.capacity_load")
    [load_table] = [rows for rows in report.section_tables(5) if share in rows[0] and probe_load not in rows[0]]
    load_rows = [dict(zip(load_table[0], r, strict=True)) for r in load_table[1:]]
    assert [r[label(language, "col.point")] for r in load_rows] == [p["name"] for p in bench["points"]]
    assert {r[label(language, "col.steady_tok_s")] for r in load_rows} == {"40.0", "40.0 ⚠"}  # c16: too short
    assert str(t("limit.batch_slots")) in markdown and "bench.json: limits" in markdown
    assert (directory / "plots" / "bench_capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/bench_capacity.png" in markdown
    save(directory, "bench.json", with_capacity(bench, meets_up_to=0))
    _, report = render(directory, language)
    assert row_status(report, "bench_capacity", language) == PASSED
    none = str(t("capacity.none", low="1", high="8", unit=unit, repeats=2))
    assert none in row_detail(report, "bench_capacity", language)
    save(directory, "bench.json", with_capacity(bench, meets_up_to=5, flaky={4: [True, False]}))
    _, report = render(directory, language)
    assert row_status(report, "bench_capacity", language) == NOT_MEASURED
    assert str(t("capacity.indeterminate", value="4", unit=unit, met=1, repeats=2)) in row_detail(
        report, "bench_capacity", language
    )
    assert load(directory, "report.json")["status"] == PASSED  # nothing to judge the capacity against


@pytest.mark.parametrize("language", ["en"])  # the Chinese catalog: the bench rows' test
def test_accuracy_row_and_table_follow_accuracy_json(tmp_path, language):
    """§5.7 and the conclusion's accuracy row read accuracy.json: the recorded gate (passed), the same gate over
    an engine run that lost answers (failed, and the report fails), and accuracy switched off (not measured,
    overall status untouched)."""
    from npuport.accuracy.gate import accuracy_check

    directory = artifact_set(tmp_path)
    accuracy = load(directory, "accuracy.json")
    _, report = render(directory, language)
    assert row_status(report, "accuracy", language) == PASSED
    tasks = report.table_with(5, label(language, "col.mdd"))
    assert [r[label(language, "col.task")] for r in tasks] == [v["task"] for v in accuracy["check"]["tasks"]]
    assert accuracy["engine"]["command"].split(" --model_args")[0] in report.markdown
    engine = json.loads(json.dumps(accuracy["engine"]))
    for sample in engine["tasks"]["npuport_tiny_gen"]["samples"][:20]:
        sample["correct"] = 0  # twenty answers lost
    check = accuracy_check(engine_run=engine, reference_run=accuracy["reference"], alpha=0.05, max_drop=5)
    save(directory, "accuracy.json", accuracy | {"check": check, "status": check["status"], "reason": check["reason"]})
    _, report = render(directory, language)
    assert row_status(report, "accuracy", language) == FAILED
    assert "npuport_tiny_gen" in row_detail(report, "accuracy", language)
    assert load(directory, "report.json")["status"] == FAILED
    off = {"status": "not run", "reason": "accuracy.enabled is false in the pipeline config"}
    check = accuracy_check(engine_run=off, reference_run=off)
    settings = accuracy["settings"] | {"enabled": False}
    save(directory, "accuracy.json", accuracy | {"settings": settings, "check": check, "status": check["status"]})
    _, report = render(directory, language)
    assert row_status(report, "accuracy", language) == NOT_MEASURED
    assert load(directory, "report.json")["status"] == PASSED


def npu_env(directory: Path) -> dict:
    """env.json of an Ascend host: the recorded npu-smi table of a 910B3 host, diagnosed by the real rules."""
    env = load(directory, "env.json")
    smi_text = NPU_SMI.read_text(encoding="utf-8").partition("\n")[2]
    parsed = parse_npu_smi_info(smi_text)
    env["accelerators"]["npu_smi"] = {
        "present": True,
        "path": "/usr/local/bin/npu-smi",
        "returncode": 0,
        "parsed": parsed,
        "errors": [],
        "raw": smi_text,
    }
    env["accelerators"]["torch_npu"] = {
        "installed": True,
        "import_ok": True,
        "is_available": True,
        "device_count": parsed["count"],
        "names": [parsed["model"]] * parsed["count"],
    }
    env["versions"].update(
        {"torch": "2.9.0", "torch_npu": "2.9.0.post1", "vllm": "0.18.0", "vllm_ascend": "0.18.0rc1", "CANN": "8.5.1"}
    )
    env["container"]["cann_toolkit"] = {
        "home": "/usr/local/Ascend/cann-8.5.1",
        "real_path": "/usr/local/Ascend/cann-8.5.1",
        "owner_uid": 0,
        "owner_matches": False,
        "writable": False,
    }
    env["container"].update({"user": "atomgit", "uid": 1000, "no_new_privs": True})
    env["env_vars"]["ASCEND_RT_VISIBLE_DEVICES"] = "9"
    env["platform"], env["device"] = "npu", f"Ascend {parsed['model']} x{parsed['count']} (torch_npu)"
    env["diagnostics"] = diagnose(env)
    return env


def test_npu_run_marks_the_npu_row_measured(tmp_path):
    directory = artifact_set(tmp_path)
    env = npu_env(directory)
    save(directory, "env.json", env)
    smoke = load(directory, "smoke.json")
    smoke["platform"] = {
        "name": "npu",
        "device_type": "npu",
        "is_cpu": False,
        "device": "Ascend910B3 (npu, vLLM platform NPUPlatform)",
    }
    save(directory, "smoke.json", smoke)
    _, report = render(directory)
    assert row_status(report, "npu") == PASSED
    assert row_status(report, "gpu") == NOT_MEASURED
    chips = report.table_with(2, "chip")
    assert len(chips) == env["accelerators"]["npu_smi"]["parsed"]["count"]
    issues = " ".join(h for h in report.h3 if h.startswith("6."))
    fixes = [h for h in report.h3 if h.startswith("7.")]
    assert env["diagnostics"], "the recorded host must raise diagnostics"
    for diag in env["diagnostics"]:
        assert diag["summary"] in issues
        assert any(diag["id"] in h for h in fixes)
        assert " ".join(diag["fix"].split()[:6]) in report.markdown.replace("\\", "")


def test_npu_run_that_failed_is_a_failed_npu_row(tmp_path):
    directory = artifact_set(tmp_path)
    save(directory, "env.json", npu_env(directory))
    smoke = load(directory, "smoke.json")
    smoke.update(
        status="failed",
        reason="generation failed: RuntimeError: ACL error",
        platform={"name": "npu", "device": "Ascend910B3 (npu, vLLM platform NPUPlatform)"},
    )
    save(directory, "smoke.json", smoke)
    _, report = render(directory)
    assert row_status(report, "npu") == FAILED
    assert row_status(report, "engine") == FAILED


def test_failed_threshold_and_real_divergence_are_failed_rows(tmp_path):
    directory = artifact_set(tmp_path)
    compare = load(directory, "compare.json")
    strict = compare["settings"]["thresholds"] | {
        "max_mean_abs_logprob_diff": compare["overall"]["mean_abs_logprob_diff"] / 2
    }
    compare["checks"][-1:-1] = compare_stage.threshold_checks(compare["overall"], strict)
    first = compare["prompts"][0]
    smoke = load(directory, "smoke.json")
    engine_record = smoke["prompts"][0]
    reference_record = dict(
        engine_record, token_ids=[engine_record["token_ids"][0] + 1] + engine_record["token_ids"][1:]
    )
    first.update(compare_stage.first_divergence(engine_record, reference_record, None))
    first["classification"] = compare_stage.classify(first["divergence"], compare["settings"]["benign_logprob_gap"])
    compare["status"] = "failed"
    save(directory, "compare.json", compare)
    markdown, report = render(directory)
    assert row_status(report, "max_mean_abs_logprob_diff") == FAILED
    assert {row_status(report, gate) for gate in ("eval_mean_kld", "prompt_mean_abs_logprob_diff")} == {PASSED}
    assert row_status(report, "tokens") == (FAILED if first["classification"] == "real divergence" else PASSED)
    assert load(directory, "report.json")["status"] == FAILED
    assert any("max_mean_abs_logprob_diff" in h for h in report.h3 if h.startswith("7."))
    divergence = report.table_with(5, label("en", "col.divergence"))[0][label("en", "col.divergence")]
    assert divergence.startswith("at token 0: engine ")
    token = engine_record["token_ids"][0]
    assert f'{token} "' in divergence  # the token's text from the model's tokenizer follows its id


def without_rope_switch(compare: dict) -> dict:
    """compare.json as for a model whose RoPE switch lies beyond max_model_len: no buckets, no bucket gates."""
    source = "switch at 4096 is not below engine.max_model_len 2048"
    compare["evaluation"]["rope_switch"] = {"position": None, "rope_type": "longrope", "source": source}
    compare["evaluation"]["buckets"] = None
    compare["checks"] = [c for c in compare["checks"] if not c["threshold"].endswith("_switch_mean_kld")]
    return compare


def with_rope_switch(compare: dict, position: int) -> dict:
    """compare.json as for a model whose RoPE switches inside the evaluation text: each bucket's statistics taken
    from the whole text's (the KLD after the switch 1.5x on both sides), its checks by compare's own gate rule."""
    evaluation = compare["evaluation"]
    evaluation["rope_switch"] = {"position": position, "rope_type": "longrope", "source": "recorded test switch"}
    buckets = {"before": {}, "after": {}}
    sides = {"engine": {"prompts": compare["overall"]}, "floor": {"prompts": compare["floor"]["prompts"]}}
    for side, doc in sides.items():
        doc["evaluation"] = evaluation[side]
        after = json.loads(json.dumps(evaluation[side]))
        after["kld"] = {key: value * 1.5 for key, value in after["kld"].items()}
        doc["before"] = {"positions": f"< {position}", **evaluation[side]}
        doc["after"] = {"positions": f">= {position}", **after}
        for name in buckets:
            buckets[name][side] = doc[name]
    evaluation["buckets"] = buckets
    token = [c for c in compare["checks"] if c.get("kind") != "floor"]
    compare["checks"] = gate_checks(sides["engine"], sides["floor"], ratio=2.0, ratios={}) + token
    return compare


def test_statistics_table_equals_the_artifacts_for_engine_and_floor(real):
    directory, report = real
    compare = load(directory, "compare.json")
    evaluation = compare["evaluation"]
    rows = {r[label("en", "col.statistic")]: r for r in report.table_with(5, label("en", "col.statistic"))}
    for side, column in (("engine", "col.gate_engine"), ("floor", "col.floor")):
        stats = evaluation[side]

        def cell(key: str) -> str:
            return rows[label("en", key)][label("en", column)]  # noqa: B023 - used in this iteration only

        assert number(cell("stat.positions")) == stats["n"]
        mean, se = (float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]\d+)?", cell("stat.mean_kld")))
        assert close(mean, stats["kld"]["mean"], 4) and close(se, stats["kld"]["se"], 2)
        for key in ("median", "p90", "p99", "p99_9", "max"):
            assert close(number(cell(f"stat.{key}_kld")), stats["kld"][key], 4), key
        assert close(number(cell("stat.same_top1")), stats["same_top1"]["p"] * 100, 4)
        assert close(number(cell("stat.rms_dp")), stats["delta_p"]["rms"] * 100, 4)
        assert close(number(cell("stat.mean_dp")), stats["delta_p"]["mean"] * 100, 4)
        assert close(number(cell("stat.ppl_reference")), stats["perplexity"]["base"], 6)
        assert close(number(cell("stat.ppl_side")), stats["perplexity"]["other"], 6)
        assert close(number(cell("stat.ln_ratio")), stats["perplexity"]["ln_ratio"], 4)
    intro = label("en", "stat.intro").format(
        tokens=f"{evaluation['text_tokens']:,}",
        segments=evaluation["segments"],
        length=f"{evaluation['segment_length']:,}",
        positions=f"{evaluation['engine']['n']:,}",
        reference_dtype=compare["floor"]["reference_dtype"],
        engine_dtype=compare["floor"]["engine_dtype"],
    )
    assert "over the full vocabulary" in intro and intro in report.markdown
    assert evaluation["method"] in report.markdown.replace("\\", "")


def test_gates_table_shows_engine_floor_ratio_and_limit_of_each_gate(tmp_path):
    directory = artifact_set(tmp_path)
    compare = load(directory, "compare.json")
    compare["checks"][-1:-1] = compare_stage.threshold_checks(compare["overall"], {"max_mean_topk_kl": 1e-6})
    save(directory, "compare.json", compare)
    _, report = render(directory)
    rows = {r[label("en", "col.threshold")]: r for r in report.table_with(5, label("en", "col.gate"))}
    assert list(rows) == [c["threshold"] for c in compare["checks"]]
    assert {c.get("kind") for c in compare["checks"]} == {"floor", "tokens", None}

    def cell(check: dict, column: str) -> str:
        return rows[check["threshold"]][label("en", column)]

    for check in compare["checks"]:
        assert close(number(cell(check, "col.gate_engine")), check["value"], 4)
        assert close(number(cell(check, "col.limit")), check["limit"], 4)
        assert cell(check, "col.limit").startswith(check["op"])
        assert cell(check, "col.result") == {True: "✅", False: "❌"}[check["passed"]]
        assert cell(check, "col.gate") == label("en", f"gate.{check['threshold']}")
        if check.get("kind") == "floor":
            assert close(number(cell(check, "col.floor")), check["floor"], 4)
            assert number(cell(check, "col.ratio")) == check["ratio"]
            assert number(cell(check, "col.epsilon")) == check["epsilon"]
            to_floor = check["ratio_to_floor"]
            assert (
                cell(check, "col.to_floor") == "—"
                if to_floor is None
                else close(number(cell(check, "col.to_floor")), to_floor, decimals=2)
            )
        elif check.get("kind") is None:  # a fixed threshold
            assert cell(check, "col.floor") == cell(check, "col.ratio") == label("en", "word.fixed")
        else:
            assert cell(check, "col.floor") == cell(check, "col.ratio") == "—"
    assert row_status(report, "max_mean_topk_kl") == PASSED


def test_failed_gate_is_a_failed_conclusion_row_with_its_numbers(tmp_path):
    directory = artifact_set(tmp_path)
    compare = load(directory, "compare.json")
    check = next(c for c in compare["checks"] if c["threshold"] == "eval_mean_kld")
    check.update(value=3 * check["floor"], passed=False, ratio_to_floor=3.0)
    assert check["value"] > check["limit"]
    compare.update(status="failed", reason="failed: eval_mean_kld")
    save(directory, "compare.json", compare)
    for language in ("en", "zh"):
        _, report = render(directory, language)
        assert row_status(report, "eval_mean_kld", language) == FAILED
        assert row_status(report, "eval_p99_kld", language) == PASSED
        numbers = {name: format_value(check[name]) for name in ("value", "limit", "floor")}
        expected = label(language, "detail.gate").format(ratio="3.00", **numbers)
        assert row_detail(report, "eval_mean_kld", language) == expected
        gates = {r[label(language, "col.threshold")]: r for r in report.table_with(5, label(language, "col.gate"))}
        assert gates["eval_mean_kld"][label(language, "col.result")] == "❌"
        assert any("eval_mean_kld" in h for h in report.h3 if h.startswith("6."))
    summary = load(directory, "report.json")
    assert summary["status"] == FAILED
    assert next(g for g in summary["gates"] if g["gate"] == "eval_mean_kld")["passed"] is False


def test_bucket_table_and_plot_only_with_a_rope_switch(tmp_path):
    directory = artifact_set(tmp_path)
    recorded_switch = load(directory, "compare.json")["evaluation"]["rope_switch"]
    assert recorded_switch["position"] == 256  # the embedded model switches inside the text; without one:
    compare = without_rope_switch(load(directory, "compare.json"))
    save(directory, "compare.json", compare)
    switch = compare["evaluation"]["rope_switch"]
    assert switch["position"] is None and compare["evaluation"]["buckets"] is None
    markdown, report = render(directory)
    assert not [rows for rows in report.section_tables(5) if label("en", "col.bucket") in rows[0]]
    assert label("en", "stat.no_switch").format(rope_type=switch["rope_type"], source=switch["source"]) in (
        markdown.replace("\\", "")
    )
    assert not (directory / "plots" / "kld_buckets.png").exists() and "kld_buckets" not in markdown
    for gate in ("before_switch_mean_kld", "after_switch_mean_kld"):
        assert row_status(report, gate) == NOT_MEASURED  # optional: no switch, nothing to measure
        assert switch["source"] in row_detail(report, gate)
    assert load(directory, "report.json")["status"] == PASSED

    switched = with_rope_switch(compare, 2048)
    save(directory, "compare.json", switched)
    markdown, report = render(directory)
    buckets = report.table_with(5, label("en", "col.bucket"))
    assert len(buckets) == 2
    for row, name in zip(buckets, ("before", "after"), strict=True):
        for side in ("engine", "floor"):
            kld = switched["evaluation"]["buckets"][name][side]["kld"]
            assert close(number(row[label("en", f"col.{side}_mean_kld")]), kld["mean"], 4)
            assert close(number(row[label("en", f"col.{side}_p99_kld")]), kld["p99"], 4)
    assert label("en", "stat.no_switch").split(":")[0] not in markdown
    images = [c.attrs["src"] for tok in report.tokens for c in tok.children or [] if c.type == "image"]
    assert "plots/kld_buckets.png" in images
    assert (directory / "plots" / "kld_buckets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for gate in ("before_switch_mean_kld", "after_switch_mean_kld"):
        assert row_status(report, gate) == PASSED
    recorded = {c["threshold"]: c for c in compare["checks"]}
    assert [c for c in switched["checks"] if c["threshold"] in recorded] == list(recorded.values())


def test_evaluation_not_measured_renders_its_reason(tmp_path):
    directory = artifact_set(tmp_path)
    compare = load(directory, "compare.json")
    reason = "the engine captured no logits on the evaluation text"
    compare["evaluation"] = {"status": "not measured", "reason": reason, "full_vocabulary": False}
    compare["checks"] = [
        c for c in compare["checks"] if not c["threshold"].startswith(("eval_", "before_switch_", "after_switch_"))
    ]
    save(directory, "compare.json", compare)
    for language in ("en", "zh"):
        markdown, report = render(directory, language)
        stated = label(language, "stat.not_measured").format(reason=reason)
        assert f"{label(language, 'word.not_measured')}: {stated}" in markdown
        assert not [rows for rows in report.section_tables(5) if label(language, "col.statistic") in rows[0]]
        assert "kld_cdf.png" not in markdown
        for gate in GATE_NAMES:
            if gate.startswith(("eval_", "before_switch_", "after_switch_")):
                assert row_status(report, gate, language) == NOT_MEASURED
                assert row_detail(report, gate, language) == label(language, "why.evaluation").format(reason=reason)
            else:
                assert row_status(report, gate, language) == PASSED
    summary = load(directory, "report.json")
    assert summary["status"] == NOT_MEASURED
    assert summary["evaluation"]["status"] == "not measured" and summary["evaluation"]["reason"] == reason
    assert not (directory / "plots" / "kld_cdf.png").exists()


def test_summary_adds_the_gates_and_the_evaluation(real):
    directory, _ = real
    summary, compare = load(directory, "report.json"), load(directory, "compare.json")
    assert list(summary)[:5] == ["model", "status", "engine_device", "counts", "checks"]
    assert [g["gate"] for g in summary["gates"]] == [c["threshold"] for c in compare["checks"]]
    for gate, check in zip(summary["gates"], compare["checks"], strict=True):
        assert {k: v for k, v in gate.items() if v is not None} == {
            "gate": check["threshold"],
            **{k: v for k, v in check.items() if k not in ("threshold", "metric") and v is not None},
        }
    evaluation = compare["evaluation"]
    assert summary["evaluation"]["mean_kld_engine"] == evaluation["engine"]["kld"]["mean"]
    assert summary["evaluation"]["mean_kld_floor"] == evaluation["floor"]["kld"]["mean"]
    assert summary["evaluation"]["perplexity_floor"] == evaluation["floor"]["perplexity"]["other"]
    assert summary["evaluation"]["perplexity_reference"] == compare["overall"]["perplexity_reference"]


def test_markdown_metacharacters_in_artifacts_stay_text(tmp_path):
    directory = artifact_set(tmp_path)
    smoke = load(directory, "smoke.json")
    smoke["prompts"][0]["text"] = NASTY
    save(directory, "smoke.json", smoke)
    bench = load(directory, "bench.json")
    bench["serve"]["reason"] = NASTY
    bench["points"][0]["name"] = NASTY
    save(directory, "bench.json", bench)
    env = load(directory, "env.json")
    env["diagnostics"].append(
        {"id": "nasty|id", "severity": "warning", "summary": NASTY, "evidence": [NASTY], "fix": NASTY}
    )
    save(directory, "env.json", env)
    markdown, report = render(directory)
    assert report.html_tokens() == []
    assert "<script" not in report.html and "<b>" not in report.html
    inline = [c for tok in report.tokens for c in tok.children or []]
    assert not [c for c in inline if c.type in ("link_open", "s_open")]
    assert [c.attrs["src"] for c in inline if c.type == "image"] == [
        "plots/speed.png",
        "plots/logprob_diff.png",
        "plots/kld_cdf.png",
        "plots/kld_buckets.png",
        "plots/layers_rel_l2.png",
        "plots/bench_throughput.png",
        "plots/bench_latency.png",
    ]
    assert len(report.h1) == 1 and "heading" not in report.h2 + report.h3
    outputs = report.table_with(4, label("en", "col.output"))
    assert len(outputs) == len(smoke["prompts"])
    one_line = NASTY.replace("\r\n", "\n").replace("\n", NEWLINE_MARK)
    assert outputs[0][label("en", "col.output")] == one_line.strip()
    assert NASTY.replace("\r\n", "\n") + "\n" in [body for _, body in report.fences]
    assert any(one_line.strip() in h for h in report.h3)


def test_chinese_report_has_the_same_structure_and_numbers(tmp_path):
    directory = artifact_set(tmp_path)
    en_md, en = render(directory, "en")
    zh_md, zh = render(directory, "zh")
    numbered = [h for h in zh.h2 if re.match(r"\d+\. ", h)]
    assert numbered == [f"{i}. {label('zh', f's{i}')}" for i in range(1, 12)]
    assert [len(rows) for _, rows in zh.tables] == [len(rows) for _, rows in en.tables]
    assert [len(rows[0]) for _, rows in zh.tables] == [len(rows[0]) for _, rows in en.tables]
    zh_perf = zh.table_with(5, label("zh", "col.engine"))
    en_perf = en.table_with(5, label("en", "col.engine"))
    assert [r[label("zh", "col.engine")] for r in zh_perf[1:6]] == [r[label("en", "col.engine")] for r in en_perf[1:6]]
    results = conclusion(zh, "zh")
    assert results[label("zh", "check.npu")] == f"⚠ {label('zh', 'status.not_measured')}"
    # no English wording left (artifact text, e.g. a diagnostic's fix, stays as the artifact has it)
    artifacts = " ".join(p.read_text(encoding="utf-8") for p in directory.rglob("*.json") if p.name != "report.json")
    english = [m for k, m in CATALOG["en"].items() if m != CATALOG["zh"][k] and len(m) >= 15 and "{" not in m]
    english = [m for m in english if m not in artifacts]
    assert english and [m for m in english if m in zh_md] == []


def test_missing_artifacts_render_as_not_measured(tmp_path):
    directory = tmp_path / "results" / MODEL
    (directory / "download").mkdir(parents=True)
    shutil.copy(BASE / "download" / "manifest.json", directory / "download")
    _, report = render(directory)
    assert len([h for h in report.h2 if re.match(r"\d+\. ", h)]) == 11
    assert set(conclusion(report).values()) == {f"⚠ {label('en', 'status.not_measured')}"}
    assert load(directory, "report.json")["status"] == NOT_MEASURED


# -- layer-by-layer comparison and fusion on evidence -------------------------------------------------------------


def layers_table(report: Report, language: str = "en") -> list[dict[str, str]]:
    return report.table_with(5, label(language, "col.engine_rel_l2"))


def test_layers_table_and_plot_equal_the_artifact(real):
    directory, report = real
    layers = load(directory, "layers.json")
    rows = layers_table(report)
    assert [r[label("en", "col.point")] for r in rows] == [p["point"] for p in layers["points"]]
    assert len(rows) == 15
    for row, point in zip(rows, layers["points"], strict=True):
        if point["engine"]["rel_l2"]:
            assert close(number(row[label("en", "col.engine_rel_l2")]), point["engine"]["rel_l2"], 4)
            assert close(number(row[label("en", "col.floor_rel_l2")]), point["floor"]["rel_l2"], 4)
        assert row[label("en", "col.passed")] == ("✅" if point["passed"] else "❌")
    assert (directory / "plots" / "layers_rel_l2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert row_status(report, "layers") == PASSED
    assert layers["summary"]["point"] in row_detail(report, "layers")


def diverging(directory: Path, point: str = "layers.1.mlp") -> dict:
    """layers.json with the engine 10 times the floor from ``point`` on (a scale bug in that module)."""
    layers = load(directory, "layers.json")
    points = layers["points"]
    start = next(i for i, p in enumerate(points) if p["point"] == point)
    for p in points[start:]:
        p["engine"]["rel_l2"] = 10 * p["floor"]["rel_l2"]
        p["ratio_rel_l2"], p["passed"] = 10.0, False
    bad = points[start]
    evidence = f"{bad['module']}: relative L2 error 10x the floor; the point before it, {points[start - 1]['module']}"
    layers |= {"status": "failed", "reason": f"diverges first at {bad['module']}"}
    layers["first_divergent"] = {
        "point": point,
        "module": bad["module"],
        "layer": bad["layer"],
        "kind": bad["kind"],
        "ratio": 10.0,
        "previous": points[start - 1]["point"],
        "evidence": evidence,
    }
    save(directory, "layers.json", layers)
    return layers


@pytest.mark.parametrize("language", ["en", "zh"])
def test_first_divergent_layer_is_an_issue_with_its_fix_and_a_failed_row(tmp_path, language):
    directory = artifact_set(tmp_path)
    layers = diverging(directory)
    markdown, report = render(directory, language)
    module = layers["first_divergent"]["module"]
    issue = [h for h in report.h3 if module in h]
    assert issue and "❌" in issue[0]
    assert layers["first_divergent"]["evidence"] in report.html
    assert label(language, "fix.layers.mlp") in markdown and "0.999985" in markdown
    assert row_status(report, "layers", language) == FAILED
    assert module in row_detail(report, "layers", language)
    assert load(directory, "report.json")["status"] == FAILED
    assert [r[label(language, "col.passed")] for r in layers_table(report, language)].count("❌") == 10


@pytest.mark.parametrize("kind", ["embed", "attention", "layer", "norm", "logits"])
def test_layer_fix_hint_follows_the_kind(tmp_path, kind):
    directory = artifact_set(tmp_path)
    point = {"embed": "layers.0.self_attn", "attention": "layers.2.self_attn", "layer": "layers.3"}.get(kind, kind)
    layers = diverging(directory, point)
    layers["first_divergent"]["kind"] = kind
    save(directory, "layers.json", layers)
    markdown, _ = render(directory)
    assert label("en", f"fix.layers.{kind}") in markdown


def test_layers_missing_or_not_measured_renders_not_measured(tmp_path):
    directory = artifact_set(tmp_path)
    (directory / "layers.json").unlink()
    _, report = render(directory)
    assert row_status(report, "layers") == NOT_MEASURED
    assert "layers.json" in row_detail(report, "layers")
    assert "layers_rel_l2.png" not in report.markdown
    reason = "smoke did not run: status not run"
    layers = load(BASE, "layers.json") | {"status": "not measured", "reason": reason, "points": [], "summary": None}
    save(directory, "layers.json", layers)
    markdown, report = render(directory)
    assert row_status(report, "layers") == NOT_MEASURED and row_detail(report, "layers") == reason
    assert f"⚠ {label('en', 'status.not_measured')} — {reason}" in markdown


def test_qat_evidence_and_group_size_source_are_shown(real):
    directory, report = real
    qat = load(directory, "introspect.json")["derived"]["qat"]
    fuse = load(directory, "model/fuse.json")
    weights = {r[label("en", "col.property")]: r[label("en", "col.value")] for r in report.table_with(1, "Property")}
    weights |= {
        r[label("en", "col.property")]: r[label("en", "col.value")]
        for rows in report.section_tables(1)
        if rows[0][0] == label("en", "col.property")
        for r in [dict(zip(rows[0], x, strict=True)) for x in rows[1:]]
    }
    assert qat["summary"] in weights[label("en", "weights.qat")]
    fusion = {r[label("en", "col.item")]: r[label("en", "col.value")] for r in report.table_with(3, "Item")}
    assert qat["summary"] in fusion[label("en", "fuse.qat_evidence")]
    shown = fusion[label("en", "fuse.group_size")]
    assert str(fuse["group_size"]) in shown and fuse["group_size_source"] in shown
    assert fuse["group_size_detail"] in shown


def test_not_fused_shows_why_and_removed_keys(tmp_path):
    directory = artifact_set(tmp_path)
    fuse = load(directory, "model/fuse.json")
    reason = "no sign of ternary QAT (no quantizer tensors)"
    fuse |= {"fused": False, "ternary_expected": False, "ternary_expected_reason": reason}
    save(directory, "model/fuse.json", fuse)
    repair = load(directory, "repair.json")
    repair["removed"] = [{"key": "quantization_config", "value": {"quant_method": "bitnet"}, "reason": "not ternary"}]
    save(directory, "repair.json", repair)
    markdown, report = render(directory)
    fusion = {r[label("en", "col.item")]: r[label("en", "col.value")] for r in report.table_with(3, "Item")}
    assert fusion[label("en", "fuse.ternary_expected")] == reason
    assert label("en", "s3.removed_intro").replace("`", "") in markdown.replace("\\", "")
    assert "quantization_config" in markdown and "not ternary" in markdown


@pytest.mark.parametrize("status", [PASSED, FAILED, "not run"])
@pytest.mark.parametrize("language", ["en", "zh"])
def test_qat_forward_check_row_follows_its_status(tmp_path, status, language):
    directory = artifact_set(tmp_path)
    fuse = load(directory, "model/fuse.json")
    check = {"status": status, "reason": f"reason of {status}", "tokens": 16}
    if status != "not run":
        check |= {"max_abs_logit_diff": 0.00375, "tolerance": 0.05}
    fuse["qat_forward_check"] = check
    save(directory, "model/fuse.json", fuse)
    _, report = render(directory, language)
    assert row_status(report, "qat_forward", language) == (NOT_MEASURED if status == "not run" else status)
    detail = row_detail(report, "qat_forward", language)
    if status == "not run":
        assert detail == "reason of not run"
    else:
        assert format_value(0.00375) in detail and format_value(0.05) in detail


# -- parts ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        NASTY,
        "1. starts like a list",
        "- bullet",
        "+ plus",
        "=== setext",
        "# h",
        "```",
        "trailing \\",
        "a\tb\x00c",
        "",
        "   ",
        "`lead",
        "tail`",
        "|",
        "<http://x.y>",
    ],
)
def test_escaped_text_reads_back_as_itself(value):
    expected = value.replace("\r\n", "\n").replace("\n", NEWLINE_MARK).replace("\t", " ").replace("\x00", "\\x00")
    paragraph = MD.parse(str(text(value)) or "x")
    assert [t.type for t in paragraph] in (["paragraph_open", "inline", "paragraph_close"], [])
    if expected.strip():
        assert inline_text(paragraph[1]) == expected.strip()
    rows = Report(table([[value, code(value)]], ["text", "code"])).tables[0][1]
    assert len(rows) == 2 and rows[1][0] == expected.strip()
    assert rows[1][1] == expected if expected.strip() else rows[1][1].strip() == ""
    block = MD.parse(fence(value + "\n```\n````"))
    verbatim = value.replace("\r\n", "\n").replace("\x00", "\\x00")
    assert block[0].type == "fence" and block[0].content == verbatim + "\n```\n````\n"


def test_catalogs_have_the_same_keys_and_placeholders_and_no_html():
    assert set(CATALOG["en"]) == set(CATALOG["zh"])
    for key, message in CATALOG["en"].items():
        fields = {f for _, f, _, _ in string.Formatter().parse(message) if f}
        assert fields == {f for _, f, _, _ in string.Formatter().parse(CATALOG["zh"][key]) if f}, key
    for language in ("en", "zh"):
        t = Messages(language)
        for key, message in CATALOG[language].items():
            fields = {f for _, f, _, _ in string.Formatter().parse(message) if f}
            rendered = Report(str(t(key, **dict.fromkeys(fields, "<i>x</i>"))))
            assert rendered.html_tokens() == [], (language, key)


def test_every_gate_and_threshold_has_a_label_in_both_languages():
    names = {*GATE_NAMES, *compare_stage.THRESHOLD_CHECKS, "no_real_divergence"}
    for language in ("en", "zh"):
        assert {f"gate.{name}" for name in names} <= set(CATALOG[language]), language
        assert {"check.gate", "check.threshold", "detail.gate", "stat.intro"} <= set(CATALOG[language])
    assert set(CATALOG["en"]) == set(CATALOG["zh"])


def test_npu_row_is_passed_only_for_an_npu_platform_that_ran():
    t = Messages("en")
    cpu = {"status": "ok", "platform": {"name": "cpu", "device": "vLLM CPU backend"}}
    npu = {"status": "ok", "platform": {"name": "npu", "device": "Ascend910B3"}}
    npu_failed = {"status": "failed", "reason": "x", "platform": {"name": "npu", "device": "Ascend910B3"}}
    broken = {"platform": "cpu", "diagnostics": [{"id": "torch_npu_import_failed", "severity": "error"}]}
    assert accelerator_verdict(t, "npu", platform="npu", smoke=npu, env={}).status == PASSED
    assert accelerator_verdict(t, "npu", platform="npu", smoke=npu_failed, env={}).status == FAILED
    assert accelerator_verdict(t, "npu", platform="npu", smoke=cpu, env={"platform": "cpu"}).status == NOT_MEASURED
    assert accelerator_verdict(t, "gpu", platform="cuda", smoke=npu, env={}).status == NOT_MEASURED
    unusable = accelerator_verdict(t, "npu", platform="npu", smoke=cpu, env=broken)
    assert unusable.status == NOT_MEASURED and "torch_npu_import_failed" in unusable.detail.replace("\\", "")
    failed = {"status": "failed", "reason": "x"}
    assert accelerator_verdict(t, "npu", platform="npu", smoke=failed, env={"platform": "npu"}).status == FAILED


def test_stage_costs_read_missing_values_as_not_measured(tmp_path):
    (tmp_path / "smoke.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n99.1\t0:01:39\tNA\t69.9\n")
    (tmp_path / "download.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n0.5\t0:00:00\t50.0\t0.4\n")
    (tmp_path / "custom.tsv").write_text("s\th:m:s\n1.0\t0:00:01\n")
    given = [tmp_path / f"{stage}.tsv" for stage in ("download", "introspect", "smoke", "custom")]
    costs = stage_costs(given)  # in the order given; introspect.tsv does not exist (yet)
    assert list(costs["stage"]) == ["download", "smoke", "custom"]
    assert costs.loc[1, "wall_s"] == 99.1 and math.isnan(costs.loc[1, "max_rss_mb"])
    assert costs.loc[0, "max_rss_mb"] == 50.0 and math.isnan(costs.loc[2, "cpu_s"])


def test_index_links_each_model_report_with_its_status(tmp_path):
    directory = artifact_set(tmp_path)
    render(directory)
    results = directory.parent
    write_index(
        results / "report.md",
        models=[MODEL, "absent-model"],
        reports=[directory / "report.md", results / "absent-model" / "report.md"],
        summaries=[directory / "report.json", results / "absent-model" / "report.json"],
    )
    index = Report((results / "report.md").read_text(encoding="utf-8"))
    rows = index.tables[0][1]
    assert len(rows) == 3
    links = [c.attrs["href"] for tok in index.tokens for c in tok.children or [] if c.type == "link_open"]
    assert links == [f"{MODEL}/report.md"]
    status = load(directory, "report.json")["status"]
    assert status == "passed" and rows[1][1] == f"✅ {label('en', 'status.passed')}"
    assert rows[2][1].startswith("⚠") and index.html_tokens() == []
    # the embedded model's RoPE switches inside the text: its bucket gates were measured, not listed here
    assert check_label("en", "before_switch_mean_kld") not in rows[1][4]


# -- the rules, in a copy of the workflow ------------------------------------------------------------------------


@pytest.mark.e2e
def test_report_rules_and_snakemake_html_report(tmp_path):
    from conftest import copy_workflow, planned_rules, run_snakemake

    workdir = copy_workflow(tmp_path / "wf")
    shutil.copytree(BASE, workdir / "results" / MODEL)
    # the engine's capture is not part of the recorded set (the report never reads it): an empty stand-in
    (workdir / "results" / MODEL / "capture").mkdir()
    (workdir / "results" / MODEL / "dumps").mkdir()
    for kept in ("bench", "accuracy/engine", "accuracy/reference"):  # the stages' directories beside their JSON
        (workdir / "results" / MODEL / kept).mkdir(parents=True)
    # mark the copied artifacts up to date, so only the report rules have work to do
    run_snakemake(
        workdir,
        "--touch",
        f"results/{MODEL}/compare.json",
        f"results/{MODEL}/env.json",
        f"results/{MODEL}/layers.json",
        f"results/{MODEL}/bench.json",
        f"results/{MODEL}/accuracy.json",
    )
    assert planned_rules(workdir) == {"report_model": 1, "report_index": 1, "report": 1}
    run_snakemake(workdir, "report")
    index = Report((workdir / "results" / "report.md").read_text(encoding="utf-8"))
    assert [c.attrs["href"] for t in index.tokens for c in t.children or [] if c.type == "link_open"] == [
        f"{MODEL}/report.md"
    ]
    assert sorted(p.name for p in (workdir / "results" / MODEL / "plots").glob("*.png")) == [
        "bench_latency.png",
        "bench_throughput.png",
        "kld_buckets.png",
        "kld_cdf.png",
        "layers_rel_l2.png",
        "logprob_diff.png",
        "speed.png",
    ]
    assert (workdir / "results" / MODEL / "benchmarks" / "report_model.tsv").is_file()
    assert (workdir / "logs" / MODEL / "report_model.log").is_file()
    assert planned_rules(workdir) == {}
    # a changed report setting reruns the report rules and nothing upstream
    assert planned_rules(workdir, "--config", "report={'language': 'zh'}") == {
        "report_model": 1,
        "report_index": 1,
        "report": 1,
    }
    run_snakemake(workdir, "--report", "results/report.html")
    html = (workdir / "results" / "report.html").read_text(encoding="utf-8")
    assert f'Adaptation report of model <tt class=\\"docutils literal\\"><span class=\\"pre\\">{MODEL}' in html
    assert "logprob_diff.png" in html and "kld_cdf.png" in html and "bench_throughput.png" in html
