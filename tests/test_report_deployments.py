"""The report's deployment configurations (§4.4, §6, §7, §9) rendered from a compare.json whose rows are written out
here: a passing row, a row the host could not run, and an eager row that passes where the deployed (compiled)
configuration fails. Expected cells and symbols are literal."""

from __future__ import annotations

import pytest
from test_report import artifact_set, label, load, render, save

GATE = {"kind": "floor", "op": "<=", "ratio": 2.0, "epsilon": 1e-6}


def _gate(name: str, value: float, floor: float, deployed: float) -> dict:
    limit = 2 * floor + 1e-6
    return GATE | {"threshold": name, "metric": name, "value": value, "floor": floor, "limit": limit,
                   "passed": value <= limit, "ratio_to_floor": value / floor, "deployed_value": deployed,
                   "deployed_passed": deployed <= limit, "agrees": (value <= limit) == (deployed <= limit)}  # fmt: skip


PASSED_ROW = {
    "name": "batch", "description": "inside a batch", "differs": [], "workload": {"kind": "batch", "concurrent": 8},
    "status": "passed", "reason": None, "fault_on": None, "shared_failures": [], "margin": 0.5,
    "gates": [_gate("eval_mean_kld", 1.0e-4, 1.0e-4, 1.0e-4)],
    "differential": {"gates": [GATE | {"threshold": "eval_mean_kld", "value": 0.0, "floor": 2e-4, "limit": 4.01e-4,
                                       "passed": True, "ratio_to_floor": 0.0}]},
    "greedy": {"compared": 4, "identical": 4, "first_divergence": None},
    "execution": {"sequences": 1, "positions_computed": 1024, "steps": [1], "max_requests_in_step": 8},
}  # fmt: skip
NOT_RUN_ROW = {
    "name": "tp2", "description": "", "differs": ["tensor_parallel_size=2"], "workload": {"kind": "alone"},
    "status": "not run", "reason": "tensor_parallel_size 2 needs 2 NUMA nodes; this host has 1",
    "greedy": {"compared": 0}, "execution": None,
}  # fmt: skip
GRAPH_FAULT_ROW = {
    "name": "eager", "description": "", "differs": ["enforce_eager=true"], "workload": {"kind": "alone"},
    "status": "failed", "fault_on": "the deployed configuration", "shared_failures": [], "margin": 2.6,
    "reason": "the deployed configuration fails where this one passes: eval_mean_kld",
    "gates": [_gate("eval_mean_kld", 1.0e-4, 1.0e-4, 5.2e-4)],
    "differential": {"gates": []}, "greedy": {"compared": 4, "identical": 3, "first_divergence": 7},
    "execution": {"sequences": 1, "positions_computed": 1024, "steps": [1], "max_requests_in_step": 1},
}  # fmt: skip


def _with_rows(tmp_path, rows: list[dict]):
    directory = artifact_set(tmp_path)
    compare = load(directory, "compare.json")
    compare["deployments"] = {"status": "x", "segments": 1, "spread": {"attn_implementation": "eager"},
                              "method": "m", "configurations": rows}  # fmt: skip
    save(directory, "compare.json", compare)
    return directory


def _table(report, language: str) -> dict[str, dict[str, str]]:
    rows = report.table_with(4, label(language, "col.configuration"))
    return {r[label(language, "col.configuration")].split(" ")[0]: r for r in rows}


def _conclusion_cell(report, language: str, name: str) -> str:
    wanted = label(language, "check.deployment").format(name=name)
    rows = report.table_with(9, label(language, "col.check"))
    return next(r[label(language, "col.result")] for r in rows if r[label(language, "col.check")] == wanted)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_each_configuration_is_a_row_in_4_4_and_9(tmp_path, language):
    directory = _with_rows(tmp_path, [PASSED_ROW, NOT_RUN_ROW])
    markdown, report = render(directory, language)
    table = _table(report, language)
    assert set(table) == {"batch", "tp2"}
    assert table["batch"][label(language, "col.result")].startswith("✅")
    assert table["tp2"][label(language, "col.result")].startswith("⚠")
    assert "NUMA" in table["tp2"][label(language, "col.result")]
    assert table["batch"][label(language, "col.greedy")] == "4/4"
    assert _conclusion_cell(report, language, "batch").startswith("✅")
    assert _conclusion_cell(report, language, "tp2").startswith("⚠")
    # a configuration this host cannot run leaves the overall status alone, as the NPU and GPU rows do
    summary = load(directory, "report.json")
    assert summary["status"] == "passed", summary
    assert label(language, "deploy.compiled") in markdown or label(language, "deploy.eager") in markdown


@pytest.mark.parametrize("language", ["en", "zh"])
def test_deployed_failing_where_eager_passes_says_the_graph_path(tmp_path, language):
    directory = _with_rows(tmp_path, [GRAPH_FAULT_ROW, PASSED_ROW])
    markdown, report = render(directory, language)
    assert _table(report, language)["eager"][label(language, "col.result")].startswith("❌")
    assert _conclusion_cell(report, language, "eager").startswith("❌")
    assert _conclusion_cell(report, language, "batch").startswith("✅")
    # said plainly in 4.4, an issue in 6 and its fix in 7: the graph path, and --enforce-eager while it is fixed
    sentence = label(language, "deploy.graph_path").split("{")[0]
    assert sentence in markdown
    assert "deployment_eager" in markdown and "--enforce-eager" in markdown
    assert load(directory, "report.json")["status"] == "failed"


def test_no_matrix_reads_not_measured_not_passed(tmp_path):
    directory = _with_rows(tmp_path, [])
    markdown, report = render(directory)
    assert label("en", "deploy.none") in markdown
    rows = report.table_with(9, label("en", "col.check"))
    assert not any("Deployment configuration" in r[label("en", "col.check")] for r in rows)


def _subsection(markdown: str, number: str) -> str:
    """The text of subsection ``number`` ("5.6"), up to the next heading."""
    start = markdown.index(f"### {number} ")
    return markdown[start : markdown.index("\n#", start + 1)]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_serving_and_tasks_name_the_configuration_their_server_ran(tmp_path, language):
    """§5.6 and §5.7 judge the bench stage's server: their line reads the engine settings it was started with
    (bench.json), not the smoke stage's; lm-eval's line only where its engine side went through that server."""
    directory = artifact_set(tmp_path)
    bench = load(directory, "bench.json")
    assert "--enforce-eager" in bench["server"]["command_ran"]  # the recorded run served eager
    eager, compiled = label(language, "deploy.eager"), label(language, "deploy.compiled")
    head = {key: label(language, key).split("{")[0] for key in ("deploy.served", "deploy.served_tasks")}
    markdown, _ = render(directory, language)
    serving, tasks = _subsection(markdown, "5.6"), _subsection(markdown, "5.7")
    assert head["deploy.served"] in serving and eager in serving and compiled not in serving
    assert head["deploy.served_tasks"] in tasks and eager in tasks
    # the same artifacts, the server started compiled with prefix caching off and TP 2
    command = [a for a in bench["server"]["command_ran"] if a != "--enforce-eager"]
    command[command.index("--tensor-parallel-size") + 1] = "2"
    bench["server"]["command_ran"] = [*command, "--no-enable-prefix-caching"]
    engine = bench["settings"]["engine"]
    engine.update(enforce_eager=False, tensor_parallel_size=2, enable_prefix_caching=False)
    save(directory, "bench.json", bench)
    markdown, _ = render(directory, language)
    serving = _subsection(markdown, "5.6")
    line = next(p for p in serving.split("\n\n") if head["deploy.served"] in p)
    assert compiled in line and eager not in line and "2" in line and "false" in line.lower()
    # lm-eval's engine side against another URL: §5.7 names no server configuration
    accuracy = load(directory, "accuracy.json")
    accuracy["engine"]["command"] = accuracy["engine"]["command"].replace(bench["server"]["url"], "http://elsewhere")
    save(directory, "accuracy.json", accuracy)
    markdown, _ = render(directory, language)
    assert head["deploy.served_tasks"] not in _subsection(markdown, "5.7")
    assert head["deploy.served"] in _subsection(markdown, "5.6")
