"""Hostile and careless input (issue #13): nothing deleted, nothing leaked, memory bounded, never a traceback.

Every crafted file is built here, in a temporary directory. The CLI cases run ``python -m npuport`` in a
subprocess and check: exit code 1, stderr exactly one line naming the file and the problem, no traceback,
peak RSS (the child's own VmHWM) bounded, and for the destructive cases every original file still there byte for byte.
The property-based tests feed mutations of valid headers, indexes and config.json to the library in-process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_factory import Arch, llama_state_dict, write_checkpoint, write_raw_safetensors
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npuport.core import untrusted_json
from npuport.core.errors import NpuportError
from npuport.core.paths import check_output_dir, contained, source_files
from npuport.core.settings import check_config
from npuport.weights.checkpoint import Checkpoint
from npuport.weights.introspect import introspect_checkpoint

EMBEDDED = REPO / "resources" / "tiny-bitcpm"
# Peak RSS allowed to a CLI run on a crafted file: torch alone takes about 0.3 GB; the crafted files would
# take 2.5-12 GB if they were materialised.
MAX_RSS = 1_500_000_000
RSS_SEEN: dict[str, int] = {}


# --- helpers ---------------------------------------------------------------------------------------------------


# `python -m npuport ARGS` that writes its own peak RSS (VmHWM: this process image only) to the file named by
# NPUPORT_TEST_PEAK when it exits. wait4's ru_maxrss would not do: a child inherits the peak of the process that
# forked it, and the test process may have held an engine of many GB earlier (the in-process vLLM engine).
PEAK_REPORTING_CLI = textwrap.dedent("""
    import atexit, os, re, sys

    def report():
        status = open("/proc/self/status", encoding="ascii").read()
        kib = re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)
        open(os.environ["NPUPORT_TEST_PEAK"], "w").write(kib)

    atexit.register(report)
    from npuport.__main__ import main

    sys.exit(main(sys.argv[1:]))
""")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of ``python -m npuport ARGS`` (the child's own VmHWM).
    A run past ``timeout`` (a FIFO read would block forever) is killed and fails the test."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"npuport-cli-{os.getpid()}"
    out_path, err_path, peak_path = (base.with_name(f"{base.name}-{n}") for n in "oep")
    env = os.environ | {"NPUPORT_TEST_PEAK": str(peak_path)}
    with open(out_path, "w+") as out, open(err_path, "w+") as err:
        process = subprocess.Popen([sys.executable, "-c", PEAK_REPORTING_CLI, *args], cwd=cwd, stdout=out,
                                   stderr=err, env=env)  # fmt: skip
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"npuport {' '.join(args)} still running after {timeout} s")
        out.seek(0)
        err.seek(0)
        result = process.returncode, out.read(), err.read(), int(peak_path.read_text()) * 1024
    for path in (out_path, err_path, peak_path):
        path.unlink()
    return result


def assert_one_line_error(result, command: str, *fragments: str) -> str:
    code, stdout, stderr, rss = result
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 1, (code, stderr)
    line = stderr.rstrip("\n")
    assert "\n" not in line, stderr
    assert line.startswith(f"npuport {command}: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert rss < MAX_RSS, f"peak RSS {rss} bytes"
    return line


def cli_in_process(capfd, *args: str) -> tuple[int, str, str, int]:
    """``npuport.__main__.main(ARGS)`` in this process, for the cases where memory is not the question: the
    same result tuple as run_cli (RSS 0). An exception other than the CLI's one-line error escapes and fails."""
    from npuport.__main__ import main

    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err, 0


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks as their target text), for before/after comparisons."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            files[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[rel] = "dir"
    return files


def tiny_checkpoint(directory: Path, fmt: str = "safetensors", shards: int = 1, **arch) -> Path:
    arch = Arch(**arch)
    return write_checkpoint(directory, llama_state_dict(arch, seed=1), fmt, shards, arch.config())


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rename_tensor(path: Path, old: str, new: str) -> None:
    header, data = safetensors_parts(path)
    header = {new if k == old else k: v for k, v in header.items()}
    write_raw_safetensors(path, header, data)


@pytest.fixture
def fusable(tmp_path) -> Path:
    """A copy of the embedded tiny model (config, tokenizer, weights): fuse succeeds on it."""
    return Path(shutil.copytree(EMBEDDED, tmp_path / "ckpt"))


# --- crafted files ------------------------------------------------------------------------------------------------


def _zip_local_entry(name: bytes, method: int, crc: int, sizes: tuple[int, int], data: bytes) -> bytes:
    header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, sizes[0], sizes[1], len(name), 0)
    return header + name + data


def _zip_central_entry(name: bytes, method: int, crc: int, sizes: tuple[int, int], offset: int) -> bytes:
    fields = (0x02014B50, 20, 20, 0, method, 0, 0x21, crc, sizes[0], sizes[1], len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<IHHHHHHIIIHHHHHII", *fields) + name


def _deflated_block(data: bytes) -> bytes:
    """``data`` as raw deflate blocks that refer to nothing before them: such blocks can be concatenated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def inflated_byteorder_bin(path: Path, inflated: int = 2 << 30) -> Path:
    """A torch zip of one tiny tensor whose ``byteorder`` record inflates to ``inflated`` bytes (2 GiB by default)
    from about 2 MB. The other records keep their place (and alignment); byteorder is re-appended, deflated."""
    torch.save({"model.embed_tokens.weight": torch.ones(4, 4)}, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos, cd_start = archive.infolist(), archive.start_dir
    filler = b" " * (1 << 24)
    repeats = inflated // len(filler)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the empty final block
    stream = _deflated_block(b"little") + _deflated_block(filler) * repeats + final
    crc = zlib.crc32(b"little")
    for _ in range(repeats):
        crc = zlib.crc32(filler, crc)
    body, central = bytearray(raw[:cd_start]), bytearray()
    for info in infos:
        name = info.filename.encode()
        if info.filename.endswith("/byteorder"):
            sizes, offset = (len(stream), 6 + repeats * len(filler)), len(body)
            body += _zip_local_entry(name, zipfile.ZIP_DEFLATED, crc, sizes, stream)
            central += _zip_central_entry(name, zipfile.ZIP_DEFLATED, crc, sizes, offset)
        else:
            sizes = (info.compress_size, info.file_size)
            central += _zip_central_entry(name, info.compress_type, info.CRC, sizes, info.header_offset)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(infos), len(infos), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def expanded_bin(directory: Path) -> Path:
    """A tiny Llama .bin whose embedding is a stride-0 expand() of one value claiming 8 GiB (file: ~100 KB)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = llama_state_dict(Arch(), dtype=torch.float32, seed=1)
    state["model.embed_tokens.weight"] = torch.zeros(1, 1).expand(1 << 20, 2048)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(Arch().config()))
    return directory


def system_pickle(command: bytes = b"touch /nonexistent/npuport-pwned") -> bytes:
    """A protocol-2 pickle that would call os.system(command) when loaded: GLOBAL posix.system, REDUCE."""
    arg = b"X" + struct.pack("<I", len(command)) + command  # BINUNICODE
    return b"\x80\x02" + b"cposix\nsystem\n" + arg + b"\x85" + b"R" + b"."  # TUPLE1, REDUCE, STOP


def system_pickle_zip(path: Path) -> Path:
    torch.save({"a": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as archive:
        records = {i.filename: archive.read(i) for i in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, system_pickle() if name.endswith("data.pkl") else data)
    return path


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- inspect on crafted checkpoints: one line, bounded memory -------------------------------------------------


def _layer_name(index: str) -> str:
    return f"model.layers.{index}.self_attn.q_proj.weight"


def _craft(kind: str, root: Path) -> tuple[Path, Path, list[str]]:
    """(checkpoint dir, the file the error must name, fragments of the problem) for crafted input ``kind``."""
    ckpt = root / "ckpt"
    if kind == "inflated byteorder":
        ckpt.mkdir()
        path = inflated_byteorder_bin(ckpt / "pytorch_model.bin")
        return ckpt, path, ["refused: zip record", "byteorder", "inflates to 2147483654 bytes"]
    if kind == "stride-0 expand":
        path = expanded_bin(ckpt) / "pytorch_model.bin"
        return ckpt, path, ["refused: tensor 'model.embed_tokens.weight'", "claims 8589934592 bytes", "holds 4"]
    if kind == "system pickle":
        ckpt.mkdir()
        path = ckpt / "pytorch_model.bin"
        path.write_bytes(system_pickle())
        return ckpt, path, ["refused: the pickle imports posix.system"]
    if kind == "system pickle in zip":
        ckpt.mkdir()
        return ckpt, system_pickle_zip(ckpt / "pytorch_model.bin"), ["refused: the pickle imports posix.system"]
    tiny_checkpoint(ckpt)
    weights, config = ckpt / "model.safetensors", ckpt / "config.json"
    if kind in ("layer 10**18", "layer of 5000 digits", "layer 01"):
        index = {"layer 10**18": str(10**18), "layer of 5000 digits": "9" * 5000, "layer 01": "01"}[kind]
        rename_tensor(weights, _layer_name("1"), _layer_name(index))
        problem = "has a leading zero" if kind == "layer 01" else f"layer index of {len(index)} digits"
        return ckpt, weights, [problem]
    if kind == "deep header":
        header, data = safetensors_parts(weights)
        raw = json.dumps(header).encode()[:-1] + b', "__metadata__": {"x": ' + deep(100_000).encode() + b"}}"
        write_raw_safetensors(weights, raw, data)
        return ckpt, weights, ["JSON nested 100002 levels deep (at most 64)"]
    if kind in ("deep config", "NaN config", "Infinity config", "1e999 config", "huge int config"):
        value = {"deep config": deep(100_000), "NaN config": "NaN", "Infinity config": "-Infinity",
                 "1e999 config": "1e999", "huge int config": "7" * 5000}[kind]  # fmt: skip
        config.write_text(config.read_text()[:-1] + f', "rope_theta": {value}}}')
        problem = {"deep config": "nested 100001 levels", "NaN config": "NaN is not a JSON number",
                   "Infinity config": "-Infinity is not a JSON number", "1e999 config": "overflows to infinity",
                   "huge int config": "integer of 5000 digits"}[kind]  # fmt: skip
        return ckpt, config, [problem]
    if kind == "deep index":
        shutil.rmtree(ckpt)
        tiny_checkpoint(ckpt, shards=2)
        index = ckpt / "model.safetensors.index.json"
        index.write_text(index.read_text()[:-1] + f', "x": {deep(100_000)}}}')
        return ckpt, index, ["nested 100001 levels"]
    return _craft_header(kind, ckpt, weights)


def _craft_header(kind: str, ckpt: Path, weights: Path) -> tuple[Path, Path, list[str]]:
    header, data = safetensors_parts(weights)
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])
    first, second = header[names[0]], header[names[1]]
    if kind == "dtype as a list":
        first["dtype"] = [first["dtype"]]
        problem = "unsupported dtype ['BF16']"
    elif kind == "overlapping offsets":
        second["data_offsets"] = [o - 2 for o in second["data_offsets"]]
        problem = "overlap tensor"
    elif kind == "bytes covered by no tensor":
        data += bytes(64)
        problem = "the last 64 data bytes"
    elif kind == "gap between tensors":
        del header[names[1]]
        problem = "belong to no tensor"
    else:  # zero-sized dims: k_proj with 0 rows, or an embedding of hidden size 0
        k_proj = kind == "k_proj with 0 rows"
        target = "model.layers.0.self_attn.k_proj.weight" if k_proj else "model.embed_tokens.weight"
        state = llama_state_dict(Arch(), seed=1)
        for name in [n for n in state if n.endswith(("k_proj.weight", "v_proj.weight"))] if k_proj else [target]:
            state[name] = torch.empty(0, 64 if k_proj else 0, dtype=torch.bfloat16)
        if not k_proj:
            state["lm_head.weight"] = state[target]
        write_checkpoint(ckpt, state, config=Arch().config())
        return ckpt, weights, [target, "a dimension of size 0"]
    write_raw_safetensors(weights, header, data)
    return ckpt, weights, [problem]


# Run as real CLI processes: the crafted claims (2 GiB inflated, 8 GiB expanded, 10**18 layers, 100,000 levels
# of nesting) would take gigabytes if honoured, so the peak RSS of each run is measured.
CRAFTED_HEAVY = [
    "inflated byteorder",
    "stride-0 expand",
    "system pickle in zip",
    "layer 10**18",
    "layer of 5000 digits",
    "deep header",
]
# Parsing cases, through the CLI's main() in this process.
CRAFTED = [
    "system pickle",
    "layer 01",
    "deep config",
    "deep index",
    "NaN config",
    "Infinity config",
    "1e999 config",
    "huge int config",
    "dtype as a list",
    "overlapping offsets",
    "bytes covered by no tensor",
    "gap between tensors",
    "k_proj with 0 rows",
    "hidden size 0",
]


@pytest.mark.parametrize("kind", CRAFTED_HEAVY)
def test_inspect_crafted_input_is_one_line_with_bounded_memory(tmp_path, kind):
    ckpt, culprit, problem = _craft(kind, tmp_path)
    result = run_cli("inspect", str(ckpt))
    assert_one_line_error(result, "inspect", str(culprit), *problem)
    RSS_SEEN[kind] = result[3]


@pytest.mark.parametrize("kind", CRAFTED)
def test_inspect_crafted_input_is_one_line(tmp_path, capfd, kind):
    ckpt, culprit, problem = _craft(kind, tmp_path)
    assert_one_line_error(cli_in_process(capfd, "inspect", str(ckpt)), "inspect", str(culprit), *problem)


@pytest.mark.parametrize("kind", ["stride-0 as_strided", "legacy stride-0 expand"])
def test_views_larger_than_their_storage_are_refused_before_loading(tmp_path, kind):
    if "as_strided" in kind:
        tensor, stored = torch.zeros(64).as_strided((1 << 20, 64), (0, 1)), 256
    else:
        tensor, stored = torch.ones(1).expand(1 << 30), 4
    torch.save({"a": tensor}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization="legacy" not in kind)
    with pytest.raises(NpuportError, match=rf"refused: tensor 'a' .* claims \d+ bytes but its storage holds {stored}:"):
        Checkpoint.open(tmp_path)


def test_pickle_refusal_names_the_import_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "pytorch_model.bin").write_bytes(system_pickle(f"touch {marker}".encode()))
    with pytest.raises(NpuportError, match=r"refused: the pickle imports posix\.system \(") as info:
        Checkpoint.open(tmp_path)
    assert "weights_only" not in str(info.value)  # never torch's advice to turn the safe loader off
    assert not marker.exists()


def test_inspect_peak_rss_on_crafted_files_stays_near_a_plain_run(tmp_path):
    tiny_checkpoint(tmp_path / "plain")
    code, _, stderr, plain = run_cli("inspect", str(tmp_path / "plain"))
    assert code == 0, stderr
    crafted = max(RSS_SEEN.values(), default=0)
    print(
        f"peak RSS: plain inspect {plain / 1e6:.0f} MB; crafted { ({k: round(v / 1e6) for k, v in RSS_SEEN.items()}) }"
    )
    assert crafted < plain + 300_000_000


# --- paths: containment, FIFOs, loops -------------------------------------------------------------------------------


def test_inspect_refuses_weights_behind_a_symlink_leaving_the_checkpoint(tmp_path):
    tiny_checkpoint(tmp_path / "elsewhere")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").symlink_to(tmp_path / "elsewhere" / "model.safetensors")
    result = run_cli("inspect", str(tmp_path / "ckpt"))
    assert_one_line_error(result, "inspect", str(tmp_path / "ckpt" / "model.safetensors"), "symlink points outside")


def test_index_shard_behind_a_symlink_leaving_the_checkpoint_is_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", shards=2)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.rename(tmp_path / "outside.safetensors")
    shard.symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(NpuportError, match="symlink points outside"):
        Checkpoint.open(ckpt)


@pytest.mark.parametrize("command", ["inspect", "fuse"])
def test_fifo_as_config_json_is_refused_not_read(fusable, tmp_path, command):
    (fusable / "config.json").unlink()
    os.mkfifo(fusable / "config.json")
    args = [str(fusable)] + ([str(tmp_path / "out")] if command == "fuse" else [])
    result = run_cli(command, *args, timeout=60)
    assert_one_line_error(result, command, str(fusable / "config.json"), "a FIFO, not a regular file")
    assert not (tmp_path / "out").exists()


def test_fifo_as_weights_is_refused(tmp_path):
    tmp_path.joinpath("ckpt").mkdir()
    os.mkfifo(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(NpuportError, match="model.safetensors: refused: a FIFO"):
        Checkpoint.open(tmp_path / "ckpt")


def test_symlink_loop_as_the_source_and_inside_it(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert_one_line_error(run_cli("inspect", str(tmp_path / "loop")), "inspect", str(tmp_path / "loop"), "symlink loop")
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "notes.txt").symlink_to(ckpt / "notes.txt")
    with pytest.raises(NpuportError, match=r"notes\.txt: refused: symlink loop"):
        source_files(ckpt)


def test_download_refuses_a_symlink_loop_in_a_local_source(tmp_path):
    from npuport.download.download import download

    ckpt = tiny_checkpoint(tmp_path / "src")
    (ckpt / "a").symlink_to(ckpt / "b")
    (ckpt / "b").symlink_to(ckpt / "a")
    with pytest.raises(NpuportError, match="symlink loop"):
        download({"kind": "local", "path": "src"}, tmp_path / "download", base_dir=tmp_path)
    (tmp_path / "looped").symlink_to(tmp_path / "looped")
    with pytest.raises(NpuportError, match="symlink loop"):
        download({"kind": "local", "path": "looped"}, tmp_path / "download", base_dir=tmp_path)
    assert not (tmp_path / "download").exists()


def test_contained_is_the_one_rule(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "f").write_text("x")
    (tmp_path / "root" / "inner").symlink_to("sub/f")
    (tmp_path / "root" / "outer").symlink_to(tmp_path / "secret")
    assert contained(tmp_path / "root", "inner") == (tmp_path / "root" / "sub" / "f").resolve()
    for escaping in ("outer", "../secret", "sub/../../secret", str(tmp_path / "secret")):
        with pytest.raises(NpuportError, match="symlink points outside"):
            contained(tmp_path / "root", escaping)


# --- fuse: never destroy what was not asked to be replaced, never copy what lies outside ------------------------


def test_fuse_refuses_a_side_file_that_is_a_symlink_to_a_file_outside(fusable, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    (fusable / "extra.txt").symlink_to(secret)
    out = tmp_path / "out"
    result = run_cli("fuse", str(fusable), str(out))
    assert_one_line_error(result, "fuse", str(fusable / "extra.txt"), "symlink points outside the source directory")
    assert not out.exists()
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any(b"secret-hash" in p.read_bytes() for p in copies)


def test_fuse_refuses_a_tokenizer_file_behind_a_symlink_outside(fusable, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((fusable / "tokenizer.json").read_bytes())
    (fusable / "tokenizer.json").unlink()
    (fusable / "tokenizer.json").symlink_to(tmp_path / "tokenizer.json")
    result = run_cli("fuse", str(fusable), str(tmp_path / "out"))
    assert_one_line_error(result, "fuse", str(fusable / "tokenizer.json"), "symlink points outside")


def _fill(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thesis.tex").write_text("years of work\n")
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "results.csv").write_text("1,2,3\n")


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
@pytest.mark.parametrize("case", ["source", "parent of source", "inside source", "cwd", "parent of cwd", "a file"])
def test_fuse_never_replaces_what_it_must_not(fusable, tmp_path, capfd, monkeypatch, case, force):
    home = tmp_path / "home" / "work"
    _fill(home)
    out, cwd, culprit = {
        "source": (str(fusable), None, "is the source directory"),
        "parent of source": (str(tmp_path), None, "contains the source"),
        "inside source": (str(fusable / "fused"), None, "is inside the source directory"),
        "cwd": (".", home, "is the working directory"),
        "parent of cwd": ("..", home, "contains the working directory"),
        "a file": (str(home / "thesis.tex"), None, "exists and is not a directory"),
    }[case]
    before = snapshot(tmp_path)
    monkeypatch.chdir(cwd or tmp_path / "home")
    result = cli_in_process(capfd, "fuse", str(fusable), out, *(["--force"] if force else []))
    assert_one_line_error(result, "fuse", out, culprit, "refused even with --force")
    assert snapshot(tmp_path) == before


def test_fuse_into_the_working_directory_as_a_real_process(fusable, tmp_path):
    home = tmp_path / "home"
    _fill(home)
    before = snapshot(tmp_path)
    result = run_cli("fuse", str(fusable), ".", "--force", cwd=home)
    assert_one_line_error(result, "fuse", "is the working directory", "refused even with --force")
    assert snapshot(tmp_path) == before


def test_fuse_refuses_an_occupied_output_unless_forced(fusable, tmp_path, capfd):
    out = tmp_path / "out"
    _fill(out)
    before = snapshot(tmp_path)
    result = cli_in_process(capfd, "fuse", str(fusable), str(out))
    assert_one_line_error(result, "fuse", str(out), "exists and is not empty: pass --force to replace it")
    assert snapshot(tmp_path) == before
    code, stdout, stderr, _ = cli_in_process(capfd, "fuse", str(fusable), str(out), "--force")
    assert code == 0, stderr
    assert (out / "fuse.json").is_file() and not (out / "thesis.tex").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if k.startswith("ckpt")} == {
        k: v for k, v in before.items() if k.startswith("ckpt")
    }


def test_check_output_dir_accepts_new_and_empty_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tiny_checkpoint(tmp_path / "src")
    check_output_dir(tmp_path / "new" / "out", source=source)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", source=source)
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(NpuportError, match="is a symbolic link"):
        check_output_dir(tmp_path / "link", source=source, force=True)


# --- the workflow's inputs --------------------------------------------------------------------------------------


def test_model_name_with_a_trailing_newline_fails_the_schema(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    check_config(config, str(schema), ["config.yaml"])
    for bad in ("abc\n", "abc\nx", "../abc", ".hidden"):
        config["models"][0]["name"] = bad
        with pytest.raises(NpuportError, match="models/0/name"):
            check_config(config, str(schema), ["config.yaml"])


def test_every_error_message_is_one_bounded_line():
    error = NpuportError("dir\nname", "tensor 'a\nb' " + "x" * 100_000)
    assert "\n" not in str(error) and len(str(error)) < 2200
    assert "dir\\nname" in str(error) and "a\\nb" in str(error)


def test_inspect_sample_rows_zero_is_one_line(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    assert_one_line_error(run_cli("inspect", str(tmp_path / "ckpt"), "--sample-rows", "0"), "inspect", "sample_rows")


# --- bounded JSON ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (deep(65), "nested 65 levels deep"),
        ('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', None),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": 1e400}', "overflows to infinity"),
        ('{"a": ' + "1" * 301 + "}", "integer of 301 digits"),
        ('{"a": -' + "9" * 100_000 + "}", "integer of 100000 digits"),  # far past Python's own 4300-digit cap
        ('{"model_max_length": 1000000000000000019884624838656}', None),  # transformers' VERY_LARGE_INTEGER
        ('{"a": ' + "9" * 300 + "}", None),
        ('{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        ('{"a": "\\ud83d\\ude00"}', None),
    ],
)
def test_untrusted_json_limits(text, problem):
    if problem is None:
        untrusted_json.loads(text, source="f.json")
    else:
        with pytest.raises(NpuportError, match=f"f.json: refused: .*{problem}"):
            untrusted_json.loads(text, source="f.json")


def test_untrusted_json_refuses_oversized_files_before_reading(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}" + " " * 100)
    with pytest.raises(NpuportError, match="102 bytes, more than the 50 allowed"):
        untrusted_json.read(path, max_bytes=50)


# --- property-based: mutations of valid inputs give a result or one NpuportError, never anything else ----------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
INDEX_TEXT = st.sampled_from(["0", "1", "2", "01", "00", "7", "99", "10000000000", "9" * 40, "1 ", "-1", "١"])
FUZZ = settings(
    max_examples=int(os.environ.get("NPUPORT_FUZZ_EXAMPLES", "120")),  # more for a longer hunt
    deadline=60_000,  # a hang guard, not a speed claim: an example takes milliseconds, a loaded host stalls seconds
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


FUZZ_RSS_START: list[int] = []


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _introspect_or_one_line_error(directory: Path) -> None:
    """The property: a document that inspect --json can print, or one bounded NpuportError line; and no example
    raises this process's peak RSS by more than 500 MB above where the fuzzing started."""
    FUZZ_RSS_START[:] = FUZZ_RSS_START or [_peak_rss()]
    try:
        document = introspect_checkpoint(directory)
    except NpuportError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2200
        return
    finally:
        assert _peak_rss() - FUZZ_RSS_START[0] < 500_000_000
    json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")  # what inspect --json prints


def _mutate_entry(data, header: dict) -> None:
    names = sorted(n for n in header if n != "__metadata__")
    name = data.draw(st.sampled_from(names))
    action = data.draw(st.sampled_from(["field", "number", "rename", "delete", "copy", "metadata"]))
    if action == "field":
        header[name][data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = data.draw(JSON_VALUES)
    elif action == "number":
        field = data.draw(st.sampled_from(["shape", "data_offsets"]))
        values = header[name].get(field)
        if isinstance(values, list) and values:
            i = data.draw(st.integers(0, len(values) - 1))
            values[i] = data.draw(st.sampled_from([0, 1, 2**63, 2**64 + 5, 10**19]) | st.integers(-3, 3).map(
                lambda d, v=values[i]: v + d))  # fmt: skip
    elif action == "rename":
        renamed = name.replace(".0.", f".{data.draw(INDEX_TEXT)}.", 1) if ".0." in name else data.draw(st.text())
        header[renamed] = header.pop(name)
    elif action == "delete":
        del header[name]
    elif action == "copy":
        header[data.draw(st.text(max_size=60))] = json.loads(json.dumps(header[name]))
    else:
        header["__metadata__"] = data.draw(JSON_VALUES)


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_headers_never_escape_as_another_exception(tmp_path_factory, data):
    ckpt = tmp_path_factory.mktemp("fuzz-header")
    tiny_checkpoint(ckpt)
    header, payload = safetensors_parts(ckpt / "model.safetensors")
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_entry(data, header)
    raw = json.dumps(header).encode()
    if data.draw(st.booleans()):  # a slice of the JSON text replaced by random text
        start = data.draw(st.integers(0, len(raw)))
        raw = raw[:start] + data.draw(st.text(max_size=8)).encode() + raw[start + data.draw(st.integers(0, 8)) :]
    payload = payload[: data.draw(st.integers(len(payload) - 16, len(payload) + 16))]
    write_raw_safetensors(ckpt / "model.safetensors", raw, payload + bytes(16))
    _introspect_or_one_line_error(ckpt)


@FUZZ
@given(data=st.data())
def test_mutated_indexes_never_escape_as_another_exception(tmp_path_factory, data):
    ckpt = tmp_path_factory.mktemp("fuzz-index")
    tiny_checkpoint(ckpt, shards=2)
    path = ckpt / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    weight_map = index["weight_map"]
    names, shards = sorted(weight_map), sorted(set(weight_map.values()))
    odd = ["../model-00001-of-00002.safetensors", "/etc/passwd", "a\0b", ".", "", "sub/x", "config.json"]
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names) | st.text(max_size=20))
        value = data.draw(st.sampled_from(odd + shards) | JSON_VALUES)
        if data.draw(st.booleans()):
            weight_map[name] = value
        else:
            index[data.draw(st.sampled_from(["weight_map", "metadata", "x"]))] = value
    path.write_text(json.dumps(index))
    _introspect_or_one_line_error(ckpt)


ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8, "F16": 2,
             "BF16": 2, "F32": 4, "F64": 8, "C64": 8, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
NAME_PARTS = st.sampled_from(["model.", "layers.", "0.", "1.", "2.", "self_attn.", "mlp.", "q_proj.", "k_proj.",
                              "v_proj.", "o_proj.", "gate_proj.", "up_proj.", "down_proj.", "embed_tokens.",
                              "lm_head.", "rotary_emb.", "weight", "bias", "inv_freq", "quant.", "alpha"])  # fmt: skip


def _valid_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], seed: int) -> None:
    """A well-formed safetensors file (offsets tiling the data) holding random bytes for ``tensors``."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = ST_DTYPES[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    write_raw_safetensors(path, header, random.Random(seed).randbytes(offset))


@FUZZ
@given(data=st.data())
def test_well_formed_files_of_any_structure_never_escape_as_another_exception(tmp_path_factory, data):
    """Valid safetensors whose tensors have arbitrary names, dtypes and shapes: the derivation itself is fuzzed."""
    ckpt = tmp_path_factory.mktemp("fuzz-structure")
    arch = Arch(**data.draw(st.fixed_dictionaries({
        "hidden_size": st.integers(1, 24), "num_hidden_layers": st.integers(1, 3),
        "num_attention_heads": st.integers(1, 4), "num_key_value_heads": st.integers(1, 4),
        "head_dim": st.integers(1, 8), "intermediate_size": st.integers(1, 24), "vocab_size": st.integers(1, 16),
        "tie_word_embeddings": st.booleans(), "attention_bias": st.booleans()})))  # fmt: skip
    tensors = {n: ["BF16", list(t.shape)] for n, t in llama_state_dict(arch).items()}
    for _ in range(data.draw(st.integers(0, 6))):
        name = data.draw(st.sampled_from(sorted(tensors)))
        action = data.draw(st.sampled_from(["dtype", "shape", "drop", "add"]))
        if action == "dtype":
            tensors[name][0] = data.draw(st.sampled_from(sorted(ST_DTYPES)))
        elif action == "shape":
            tensors[name][1] = data.draw(st.lists(st.integers(0, 40), max_size=3))
        elif action == "drop" and len(tensors) > 1:
            del tensors[name]
        else:
            new = "".join(data.draw(st.lists(NAME_PARTS, min_size=1, max_size=8)))
            tensors[new] = [
                data.draw(st.sampled_from(sorted(ST_DTYPES))),
                data.draw(st.lists(st.integers(0, 9), max_size=3)),
            ]
    _valid_safetensors(
        ckpt / "model.safetensors", {n: (d, s) for n, (d, s) in tensors.items()}, data.draw(st.integers(0, 9))
    )
    (ckpt / "config.json").write_text(json.dumps(arch.config()))
    _introspect_or_one_line_error(ckpt)


CONFIG_KEYS = [
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_scaling", "rope_parameters",
    "partial_rotary_factor", "architectures", "model_type", "scale_emb", "scale_depth", "dim_model_base",
    "num_experts", "hidden_act", "torch_dtype", "dtype", "tie_word_embeddings", "vocab_size",
]  # fmt: skip


@FUZZ
@given(data=st.data())
def test_mutated_configs_never_escape_as_another_exception(tmp_path_factory, data):
    ckpt = tmp_path_factory.mktemp("fuzz-config")
    tiny_checkpoint(ckpt)
    config = Arch().config()
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(CONFIG_KEYS))
        factors = st.lists(st.floats(allow_nan=False) | st.integers(), max_size=40)
        rope = st.fixed_dictionaries({"long_factor": factors, "short_factor": factors})
        config[key] = data.draw(JSON_VALUES | rope | st.sampled_from(["MiniCPMForCausalLM", ["MiniCPMForCausalLM"]]))
    raw = json.dumps(config)
    if data.draw(st.booleans()):
        start = data.draw(st.integers(0, len(raw)))
        raw = raw[:start] + data.draw(st.text(max_size=6)) + raw[start:]
    (ckpt / "config.json").write_text(raw, encoding="utf-8", errors="surrogatepass")
    _introspect_or_one_line_error(ckpt)


def test_pickle_fixture_is_really_a_system_call():
    """The crafted pickle would call os.system: the standard unpickler resolves its global to it (not called)."""

    class Resolver(pickle.Unpickler):
        def find_class(self, module, name):
            raise LookupError(f"{module}.{name}")

    import io

    with pytest.raises(LookupError, match=r"posix\.system"):
        Resolver(io.BytesIO(system_pickle())).load()


def test_group_size_that_does_not_divide_the_linears_is_refused_before_writing(tmp_path):
    from npuport.weights.fuse import check_group_size

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    introspection = introspect_checkpoint(ckpt)
    with Checkpoint.open(ckpt) as checkpoint:
        check_group_size(checkpoint, mode="always", group_size=32, introspection=introspection)
        with pytest.raises(NpuportError, match="has 64 input features, not a multiple of fuse.group_size 48"):
            check_group_size(checkpoint, mode="always", group_size=48, introspection=introspection)


def test_inspect_text_output_escapes_control_characters_from_the_config(tmp_path):
    """A config.json value with a terminal escape sequence is printed escaped, never raw."""
    import json as _json
    import subprocess
    import sys

    from model_factory import tiny_model, write_latent_checkpoint

    ckpt = write_latent_checkpoint(tmp_path / "ckpt", tiny_model(), config_edits={"hidden_size": 10**6})
    config = _json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "llama"
    config["num_hidden_layers"] = "\x1b[2J\x1b[31mpwned"
    (ckpt / "config.json").write_text(_json.dumps(config), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "npuport", "inspect", str(ckpt)], capture_output=True, text=True)
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    assert "\\x1b[2J" in result.stdout  # shown, escaped
