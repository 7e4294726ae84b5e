"""Which torch, torch_npu and CANN releases belong together (COMPAT), and how to look a host's versions up in it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Stack:
    """torch, the torch_npu release line built for it, and the CANN releases published as matching it."""

    torch: str
    torch_npu: str
    cann: tuple[str, ...]
    source: str


# Versions that belong together. Sources (looked up, not remembered):
#  [VA] vllm-project/vllm-ascend docs/source/community/versioning_policy.md, "Release compatibility matrix";
#  [PT] Ascend/pytorch README (branch v2.7.1-7.3.0, README.zh.md table 1 and the 2026 README table);
#  [HA] hiascend.com Ascend Extension for PyTorch 7.0.0 release note (CANN 8.1.RC1 / PyTorch 2.5.1);
#  [VI] vllm-ascend v0.26.0rc1 installation.md (CANN 9.1.0, torch 2.10.0, torch-npu 2.10.0.post4).
COMPAT: tuple[Stack, ...] = (
    Stack("2.10.0", "2.10.0", ("9.0.0", "9.0.1", "9.1.0"), "[VA] v0.20.2rc1-v0.23.0rc1; [PT] CANN 9.0.0; [VI]"),
    Stack(
        "2.9.0",
        "2.9.0",
        ("8.5.0", "8.5.1"),
        "[VA] v0.14.0rc1-v0.15.0rc1 (CANN 8.5.0), v0.16.0rc1-v0.19.1rc1 (CANN 8.5.1; v0.18.0 ships torch_npu "
        "2.9.0.post1); [PT] v2.9.0-7.3.0 with CANN 8.5.0",
    ),
    Stack(
        "2.8.0",
        "2.8.0",
        ("8.3.RC1", "8.3.RC2", "8.5.0", "8.5.1"),
        "[VA] v0.12.0rc1-v0.13.0rc3 (CANN 8.3.RC2/8.5.0/8.5.1); [PT] 2.8.0 with CANN 8.3.RC1, 2.8.0.post2 with 8.5.0",
    ),
    Stack(
        "2.7.1",
        "2.7.1",
        ("8.2.RC1", "8.3.RC1", "8.3.RC2", "8.5.0"),
        "[VA] v0.10.0rc1-v0.11.0 (CANN 8.2.RC1/8.3.RC1/8.3.RC2); [PT] 2.7.1.post2 with CANN 8.5.0",
    ),
    Stack("2.6.0", "2.6.0", ("8.5.0",), "[PT] 2.6.0.post5 with CANN 8.5.0"),
    Stack(
        "2.5.1",
        "2.5.1",
        ("8.0.0", "8.1.RC1", "8.2.RC1"),
        "[VA] v0.7.3-v0.9.2rc1 (CANN 8.0.0/8.1.RC1/8.2.RC1); [HA] CANN 8.1.RC1 with torch_npu 2.5.1",
    ),
)


def release(version: str | None) -> str | None:
    """'2.9.0.post1+git4c901a4' -> '2.9.0'; None for 'absent'/'unknown...'."""
    match = re.match(r"^(\d+\.\d+\.\d+)", version or "")
    return match[1] if match else None


def stack_for(torch_version: str | None, torch_npu_version: str | None) -> Stack | None:
    """The COMPAT row for the installed torch (or, when torch is unknown, for torch_npu)."""
    wanted = release(torch_version) or release(torch_npu_version)
    return next((row for row in COMPAT if row.torch == wanted), None)


def stack_text(row: Stack | None) -> str:
    """The install advice for a COMPAT row, or for every row when the host's torch has none."""
    if row is None:
        known = "; ".join(f"torch {r.torch} + torch_npu {r.torch_npu}.x + CANN {'/'.join(r.cann)}" for r in COMPAT)
        return f"Install one matching set, e.g. {known}."
    return (
        f"Install the set that belongs together: torch {row.torch} + torch_npu {row.torch_npu} (or its .postN) + "
        f"CANN {' or '.join(row.cann)} with the NNAL (ATB) package of the same CANN version (source: {row.source})."
    )


def cann_matches(cann: str, row: Stack) -> bool:
    return any(cann.lower().startswith(v.lower()) for v in row.cann)
