import pytest

from npuport.core.errors import NpuportError
from npuport.core.settings import model_entry, model_names, model_section, parse_size

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
