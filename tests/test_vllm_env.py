"""The engine settings vLLM reads from the environment (npuport.engines.vllm_env): what each value of aot_compile
sets, that the offline engine's arguments leave it out, and that the recorded `vllm serve` command carries it."""

from __future__ import annotations

import shlex

import pytest

from npuport.core.settings import EngineSettings
from npuport.engines.serve_check import vllm_serve_command
from npuport.engines.vllm_env import AOT_COMPILE, cpu_backend, engine_environment, with_environment
from npuport.engines.vllm_runner import engine_kwargs


@pytest.mark.parametrize(
    ("value", "cpu", "eager", "expected"),
    [
        ("auto", True, False, {AOT_COMPILE: "0"}),  # vLLM 0.32 cannot load its AOT artifact on the CPU backend
        ("auto", False, False, {}),  # vLLM's own default elsewhere
        ("auto", True, True, {}),  # an eager engine compiles nothing
        (True, True, False, {AOT_COMPILE: "1"}),
        (False, False, False, {AOT_COMPILE: "0"}),
        (False, True, True, {AOT_COMPILE: "0"}),
    ],
)
def test_aot_compile_sets_vllms_variable(value, cpu, eager, expected):
    engine = EngineSettings.from_config({"aot_compile": value, "enforce_eager": eager})
    assert engine_environment(engine, cpu=cpu) == expected


def test_the_default_is_auto_and_this_host_is_vllms_cpu_backend():
    """On this host (vLLM's CPU backend) the default engine runs with vLLM's AOT compile off."""
    engine = EngineSettings.from_config({})
    assert engine.aot_compile == "auto"
    assert cpu_backend() is True
    assert engine_environment(engine) == {AOT_COMPILE: "0"}


def test_the_offline_engine_gets_no_aot_argument_and_the_serve_command_carries_the_variable():
    engine = EngineSettings.from_config({"aot_compile": False})
    assert "aot_compile" not in engine_kwargs(engine)
    command = vllm_serve_command("results/m/model", engine)
    assert command.startswith(f"{AOT_COMPILE}=0 vllm serve results/m/model ")
    assert shlex.split(command)[0] == f"{AOT_COMPILE}=0"


def test_a_value_with_spaces_is_quoted_for_the_shell():
    assert shlex.split(with_environment(["vllm", "serve", "m"], {"X": "a b"})) == ["X=a b", "vllm", "serve", "m"]
