"""Faults and bad input: each gives a clear one-line error and leaves nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import copy_workflow, run_snakemake
from model_factory import TOKENIZER_FILES, tiny_model, write_latent_checkpoint

import npuport.weights.fuse
from npuport.core.errors import NpuportError
from npuport.weights.fuse import fuse
from npuport.weights.introspect import introspect_checkpoint
from npuport.weights.repair_config import repair
from npuport.weights.tokenizer_check import check_checkpoint_tokenizer


def _fuse(src: Path, out: Path, **kwargs):
    introspection = introspect_checkpoint(src)
    config, _ = repair(src / "config.json", introspection)
    return fuse(src, config, introspection, out, group_size=32, **kwargs)


def _check_tokenizer(src: Path) -> dict:
    """What the repair_config stage checks after repairing the config, before fuse runs."""
    config, _ = repair(src / "config.json", introspect_checkpoint(src))
    return check_checkpoint_tokenizer(src, config)


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    return write_latent_checkpoint(tmp_path_factory.mktemp("latent"), tiny_model(seed=2))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root, as CI and this machine have): a real full disk."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_free_space_checked_before_writing(latent, small_tmpfs):
    with pytest.raises(NpuportError, match="not enough free disk space"):
        _fuse(latent, small_tmpfs / "model")
    assert list(small_tmpfs.iterdir()) == []


def test_disk_full_while_writing_leaves_no_partial_shard(latent, small_tmpfs, monkeypatch):
    monkeypatch.setattr(
        npuport.weights.fuse, "check_free_space", lambda target, needed: None
    )  # let the writes hit ENOSPC
    with pytest.raises(NpuportError, match="no space left on device"):
        _fuse(latent, small_tmpfs / "model", max_shard_size=200_000)
    assert list(small_tmpfs.iterdir()) == []


def test_missing_tokenizer(latent, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pytorch_model.bin", "config.json"):
        os.link(latent / name, src / name)  # a symlink out of src would be refused (tests/test_hostile_input.py)
    with pytest.raises(NpuportError, match=f"{src}: no tokenizer in the checkpoint"):
        _check_tokenizer(src)


def test_tokenizer_larger_than_embedding(tmp_path):
    src = write_latent_checkpoint(tmp_path / "src", tiny_model(seed=3, vocab_size=512))
    with pytest.raises(NpuportError, match="tokenizer has 1024 tokens but the embedding has only 512 rows"):
        _check_tokenizer(src)


def test_broken_tokenizer_file(latent, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pytorch_model.bin", "config.json", *TOKENIZER_FILES):
        os.link(latent / name, src / name)
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(NpuportError, match="tokenizer does not load"):
        _check_tokenizer(src)


def test_config_not_utf8_is_one_line_error(workflow_copy):
    config = workflow_copy / "config" / "config.yaml"
    config.write_bytes(config.read_bytes().replace("三元量化".encode(), b"\xff\xfe\xfd"))
    result = run_snakemake(workflow_copy, "-n", "report", check=False)
    assert result.returncode != 0
    assert "config/config.yaml: not valid UTF-8 (invalid start byte at byte" in result.stdout, result.stdout[-1500:]


# --- SIGKILL in the middle of fuse, then --rerun-incomplete ------------------------------------------------------

BIG = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 8, "head_dim": 64}


def _big_workflow(tmp_path: Path, name: str, source: Path) -> Path:
    workdir = copy_workflow(tmp_path / name)
    config = {
        "models": [{"name": "big", "source": {"kind": "local", "path": str(source)}}],
        "fuse": {"max_shard_size": "4MB", "group_size": 128},
    }
    (workdir / "big.yaml").write_text(json.dumps(config))
    return workdir


def _digests(workdir: Path) -> dict[str, str]:
    model = workdir / "results" / "big"
    paths = sorted((model / "model").glob("*.safetensors")) + [model / "config.json", model / "introspect.json"]
    paths += sorted((model / "download").rglob("*"))
    return {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def _kill_job_when(process: subprocess.Popen, script: str, ready, timeout: float = 300) -> None:
    """SIGKILL the job process that runs ``script`` (not Snakemake itself) once ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the job never reached the point to kill it"
        time.sleep(0.005)
    jobs = [p for p in psutil.Process(process.pid).children(recursive=True) if script in " ".join(p.cmdline())]
    assert jobs, "job process not found"
    for job in jobs:  # the job and whatever it started, as `kill -9` of its process group would
        for victim in [job, *job.children(recursive=True)]:
            victim.send_signal(signal.SIGKILL)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-2000:]


@pytest.mark.e2e
def test_sigkill_during_fuse_then_rerun_incomplete_gives_identical_outputs(tmp_path):
    source = write_latent_checkpoint(tmp_path / "src", tiny_model(seed=4, vocab_size=1024, **BIG))
    reference = _big_workflow(tmp_path, "uninterrupted", source)
    run_snakemake(reference, "results/big/model", "--configfile", "big.yaml")

    killed = _big_workflow(tmp_path, "killed", source)
    results = killed / "results" / "big"
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "results/big/model", "--configfile", "big.yaml"],
        cwd=killed,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # any shard in staging: fuse of a model this size takes a fraction of a second, a later shard can be missed
    _kill_job_when(process, "fuse", lambda: any(results.glob(".model.*.tmp/.part-*.safetensors")))
    assert not (results / "model").exists()  # nothing published that a rerun could trust

    run_snakemake(killed, "report", "--configfile", "big.yaml", "--rerun-incomplete", "--until", "fuse")
    assert not list(results.glob(".model.*.tmp"))  # the killed run's staging directory is gone
    assert _digests(killed) == _digests(reference)


# --- SIGKILL in the middle of download (hf source, loopback hub), then --rerun-incomplete ------------------------


@pytest.mark.e2e
def test_sigkill_during_download_then_rerun_incomplete_gives_identical_files(tmp_path):
    from hub_server import Faults, HubServer
    from test_sources_hf import _serve_directory

    workdir = copy_workflow(tmp_path / "wf")
    source = {"kind": "hf", "repo_id": "npuport/tiny", "revision": "main"}
    (workdir / "hub.yaml").write_text(json.dumps({"models": [{"name": "hub", "source": source}]}))
    faults = Faults(stall_s={"pytorch_model.bin": 120})
    repo = _serve_directory(workdir / "resources" / "tiny-bitcpm", "npuport/tiny")
    with HubServer(repo, faults=faults) as hub:
        env = os.environ | {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--cores", "2", "results/hub/download", "--configfile", "hub.yaml"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _kill_job_when(process, "download", lambda: bool(hub.gets("pytorch_model.bin")))
        assert not (workdir / "results" / "hub" / "download").exists()
        faults.stall_s.clear()
        run_snakemake(workdir, "results/hub/download", "--configfile", "hub.yaml", "--rerun-incomplete", env=env)
    manifest = json.loads((workdir / "results" / "hub" / "download" / "manifest.json").read_text())
    source = workdir / "resources" / "tiny-bitcpm"
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir() if p.is_file()}
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == expected
    assert all(f["verified"] for f in manifest["files"])


# --- hostile checkpoints in the workflow: one line on the console, the traceback-free log path beside it ---------


@pytest.mark.e2e
def test_hostile_checkpoints_in_the_workflow_fail_in_one_line_each(tmp_path):
    """Two crafted local sources (see tests/test_hostile_input.py): a symlink out of the source, refused by
    download; a config.json with NaN, refused by introspect. Each stage prints its one line; with the profile's
    show-failed-logs off no traceback or log body reaches the console, and nothing outside is copied."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    leaky = write_latent_checkpoint(tmp_path / "leaky", tiny_model(seed=5))
    (leaky / "extra.txt").symlink_to(secret)
    nan = write_latent_checkpoint(tmp_path / "nan", tiny_model(seed=5))
    (nan / "config.json").write_text((nan / "config.json").read_text()[:-1] + ', "rope_theta": NaN}')
    workdir = copy_workflow(tmp_path / "wf")
    models = [{"name": n, "source": {"kind": "local", "path": str(tmp_path / n)}} for n in ("leaky", "nan")]
    (workdir / "hostile.yaml").write_text(json.dumps({"models": models}))
    targets = ["results/leaky/introspect.json", "results/nan/introspect.json"]
    result = run_snakemake(workdir, *targets, "--configfile", "hostile.yaml", "--keep-going", check=False)
    output = result.stdout
    assert result.returncode != 0
    assert f"download: error: {leaky / 'extra.txt'}: refused: symlink points outside the source directory" in output
    assert "introspect: error: results/nan/download/config.json: refused: NaN is not a JSON number" in output, output
    assert "Traceback" not in output
    assert "logs/leaky/download.log" in output and "logs/nan/introspect.log" in output
    assert not (workdir / "results" / "leaky" / "download").exists()
    leaked = [p for p in workdir.rglob("*") if p.is_file() and not p.is_symlink() and b"secret-hash" in p.read_bytes()]
    assert leaked == []
