import dataclasses

import pytest

import npuport.core.settings as settings_module
from npuport.core.errors import NpuportError
from npuport.core.settings import (
    BaselineSettings,
    CompareSettings,
    EngineSettings,
    FuseSettings,
    GenerationSettings,
    IntrospectSettings,
    ServeSettings,
    ThresholdSettings,
    model_entry,
    model_names,
    model_section,
    parse_size,
    schema_defaults,
    section_schema,
)

SETTINGS = (
    FuseSettings,
    IntrospectSettings,
    EngineSettings,
    BaselineSettings,
    GenerationSettings,
    ServeSettings,
    CompareSettings,
    ThresholdSettings,
)

CONFIG = {
    "models": [
        {"name": "a", "source": {"kind": "local", "path": "x"}, "fuse": {"group_size": 64}},
        {"name": "b", "source": {"kind": "local", "path": "y"}},
    ],
    "fuse": {"mode": "auto", "group_size": 128, "max_shard_size": "2GB"},
}


def test_model_override_applies_only_to_its_model():
    assert model_section(CONFIG, "a", "fuse") == {"mode": "auto", "group_size": 64, "max_shard_size": "2GB"}
    assert model_section(CONFIG, "b", "fuse")["group_size"] == 128
    assert CONFIG["fuse"]["group_size"] == 128  # defaults not mutated


def test_unknown_model_lists_known_ones():
    with pytest.raises(NpuportError, match="unknown model 'c'.*a, b"):
        model_entry(CONFIG, "c")


def test_duplicate_model_names_refused():
    with pytest.raises(NpuportError, match="repeated: a"):
        model_names({"models": [{"name": "a"}, {"name": "a"}]})


@pytest.mark.parametrize(("text", "expected"), [(7, 7), ("2GB", 2 * 10**9), ("512 MiB", 512 * 2**20), ("1.5KB", 1500)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(NpuportError, match="not a size"):
        parse_size("2 parsecs")


# -- typed settings: defaults from the schema ------------------------------------------------------------------


def test_library_defaults_are_the_schema_defaults():
    # the library once had its own defaults (serve.startup_timeout_s 180, request_timeout_s 60) while the
    # schema, and so every pipeline run, had 300 and 120
    serve = ServeSettings.from_config({})
    assert (serve.startup_timeout_s, serve.request_timeout_s) == (300, 120)
    assert serve.as_dict() == schema_defaults("serve")
    for settings in SETTINGS:
        if settings is not GenerationSettings:  # prompts has no default: the config must give them
            assert settings.from_config({}).as_dict() == schema_defaults(settings.SECTION), settings.SECTION


def test_settings_fields_are_the_schema_keys():
    for settings in SETTINGS:
        names = [f.name for f in dataclasses.fields(settings)]
        assert names == list(section_schema(settings.SECTION)["properties"]), settings.SECTION


def test_from_config_fills_missing_keys_and_keeps_given_ones():
    engine = EngineSettings.from_config({"max_model_len": 512})
    # the deployed configuration: compiled graphs, as `vllm serve` runs
    assert engine.max_model_len == 512 and engine.dtype == "bfloat16" and engine.enforce_eager is False
    compare = CompareSettings.from_config({"window": 48, "thresholds": {"max_abs_logprob_diff": 1.0}})
    assert compare.window == 48 and compare.thresholds.max_abs_logprob_diff == 1.0
    assert compare.thresholds.min_top1_agreement is None and compare.floor_ratio == 2.0  # fixed limits: opt-in
    generation = GenerationSettings.from_config({"prompts": ["a", "b"]})
    assert generation.prompts == ("a", "b") and generation.as_dict()["prompts"] == ["a", "b"]
    assert FuseSettings.from_config({"max_shard_size": "1GiB"}).max_shard_bytes == 2**30


def test_unset_optional_key_is_none_and_left_out_of_documents():
    baseline = BaselineSettings.from_config({})
    assert baseline.threads is None and baseline.as_dict() == {"device": "cpu", "dtype": "float32"}
    assert BaselineSettings.from_config({"threads": 2}).as_dict()["threads"] == 2
    assert CompareSettings.from_config({}).as_dict()["window"] is None  # its schema default is null


@pytest.mark.parametrize(
    ("settings", "mapping", "message"),
    [
        (ServeSettings, {"startup_timeout": 5}, "serve settings: unknown key.*startup_timeout; known: enabled"),
        (CompareSettings, {"thresholds": {"top1": 1}}, "compare.thresholds settings: unknown key.*top1"),
        (GenerationSettings, {}, "generation settings: missing key.*prompts"),
        (FuseSettings, {"mode": "sometimes"}, "fuse.mode: 'sometimes' is not one of"),
        (EngineSettings, {"max_model_len": 8}, "engine.max_model_len: 8 is less than the minimum of 16"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, mapping, message):
    with pytest.raises(NpuportError, match=message) as error:
        settings.from_config(mapping)
    assert "\n" not in str(error.value)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServeSettings.from_config({}).host = "0.0.0.0"


def test_missing_schema_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(settings_module, "SCHEMA_PATH", tmp_path / "config.schema.yaml")
    settings_module.load_schema.cache_clear()
    try:
        with pytest.raises(NpuportError, match="config schema not found.*pip install -e"):
            schema_defaults("serve")
    finally:
        monkeypatch.undo()
        settings_module.load_schema.cache_clear()


def _config(**sections):
    return {"models": [{"name": "m", "source": {"kind": "local", "path": "p"}}], "generation": {"prompts": ["x"]}} | {
        key: value for key, value in sections.items()
    }


def test_max_tokens_beyond_max_model_len_is_refused_before_any_job(tmp_path):
    from npuport.core.settings import check_generation_bounds

    check_generation_bounds(_config(generation={"prompts": ["x"], "max_tokens": 128}))
    with pytest.raises(NpuportError, match=r"generation.max_tokens 1000000000 does not fit engine.max_model_len 2048"):
        check_generation_bounds(_config(generation={"prompts": ["x"], "max_tokens": 10**9}), "config.yaml")
    # a model's own engine section counts
    config = _config(generation={"prompts": ["x"], "max_tokens": 600})
    config["models"][0]["engine"] = {"max_model_len": 512}
    with pytest.raises(NpuportError, match=r"max_model_len 512 of model 'm'") as info:
        check_generation_bounds(config, "config.yaml")
    assert "\n" not in str(info.value)


def test_prompt_without_room_is_refused_and_outputs_are_capped():
    from npuport.engines.records import Prompt, check_prompts_fit, output_budget

    prompts = [Prompt("short", [1, 2, 3]), Prompt("long " * 10, list(range(600)))]
    with pytest.raises(NpuportError, match=r"prompt 2 .* has 600 tokens, no room in engine.max_model_len 512"):
        check_prompts_fit(prompts, 512)
    check_prompts_fit(prompts[:1], 512)
    assert output_budget(prompts[0], 10**9, 512) == 509  # where vLLM stops too
    assert output_budget(prompts[0], 128, 512) == 128
