import json
import subprocess
import sys

from conftest import REPO

from npuport.weights.introspect import introspect_checkpoint

EMBEDDED = REPO / "resources" / "tiny-bitcpm"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "npuport", *args], capture_output=True, text=True, timeout=300)


def test_inspect_json_prints_the_introspection_document():
    result = _cli("inspect", str(EMBEDDED), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document == json.loads(json.dumps(introspect_checkpoint(EMBEDDED)))
    derived = document["derived"]
    assert (derived["hidden_size"], derived["num_hidden_layers"], derived["num_attention_heads"]) == (128, 4, 4)
    assert (derived["num_key_value_heads"], derived["head_dim"], derived["intermediate_size"]) == (2, 32, 384)


def test_inspect_text_names_the_mismatches():
    result = _cli("inspect", str(EMBEDDED))
    assert result.returncode == 0, result.stderr
    assert "mismatch: hidden_size: config says 160, weights say 128" in result.stdout


def test_inspect_bad_directory_is_one_line_error(tmp_path):
    result = _cli("inspect", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"npuport inspect: error: {tmp_path}: no checkpoint found")


def test_fuse_command_writes_a_model_dir(tmp_path):
    result = _cli("fuse", str(EMBEDDED), str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    assert "latent linears are fake-quantized" in result.stdout
    fuse = json.loads((tmp_path / "model" / "fuse.json").read_text())
    assert fuse["all_linears_ternary"] is True
    assert json.loads((tmp_path / "model" / "config.json").read_text())["hidden_size"] == 128


def test_option_defaults_and_help_come_from_the_schema():
    from npuport.__main__ import build_parser
    from npuport.core.settings import schema_defaults, schema_description

    parser = build_parser()
    fuse = parser.parse_args(["fuse", "in", "out"])
    assert {key: getattr(fuse, key) for key in schema_defaults("fuse")} == schema_defaults("fuse")
    assert parser.parse_args(["inspect", "x"]).sample_rows == schema_defaults("introspect")["sample_rows"]
    result = _cli("fuse", "--help")
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert schema_description("fuse", "max_shard_size") in help_text
    assert "(config: fuse.group_size; default: None)" in help_text  # None: from the evidence, else 128


def test_fuse_option_is_checked_against_the_schema(tmp_path):
    result = _cli("fuse", str(EMBEDDED), str(tmp_path / "model"), "--max-shard-size", "2 parsecs")
    assert result.returncode == 1
    assert result.stderr.startswith("npuport fuse: error: fuse.max_shard_size:")
    assert not (tmp_path / "model").exists()


def test_config_docs_prints_the_config_reference():
    result = _cli("config-docs")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "config" / "README.md").read_text(encoding="utf-8")
