"""Read the text that Huawei's `npu-smi info` prints: the chip table, the process table, and its error lines."""

from __future__ import annotations

import re
from collections import Counter

_HEADER = re.compile(r"npu-smi\s+(?P<tool>\S+)\s+Version:\s*(?P<version>\S+)")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")
_CARD_ID = re.compile(r"^(?P<npu>\d+)\s+(?P<name>\S.*)$")
_CHIP_ID = re.compile(r"^(?P<chip>\d+)(?:\s+(?P<second>\d+))?$")
_PROCESS_ID = re.compile(r"^(?P<npu>\d+)\s+(?P<chip>\d+)$")

# Error texts printed instead of the table. Each was seen on a real host (tests/data/errors); the -8005 reading
# follows the vllm-ascend maintainers' answer in vllm-project/vllm-ascend#2698 ("usually ... already occupied
# by other containers"), so it is reported as busy but says "usually".
BUSY_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (
        "dcmi_device_used",
        re.compile(r"dcmi model initiali[sz]ed failed, because the device is used\. ret is (?P<code>-?\d+)"),
        "the device is used by another container or process",
    ),
    (
        "dcmi_init_failed",
        re.compile(r"dcmi module initiali[sz]e failed\. ret is (?P<code>-8005)"),
        "usually the device is already occupied by another container",
    ),
    (
        "acl_resource_busy",
        re.compile(r"Resource_Busy\((?P<code>EL0005)\)|The resources are busy"),
        "the runtime reports the device resources as occupied",
    ),
    ("os_resource_busy", re.compile(r"Device or resource busy"), "the device node is held by another process"),
)
_OTHER_DCMI = re.compile(r"dcmi (?:module|model) initiali[sz]ed? failed.*?ret is (?P<code>-?\d+)")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _card_line(cells: list[str]) -> dict | None:
    """`| 0     910B3 | OK | 94.7  54  0 / 0 |`: NPU id, name, health, power, temperature, hugepages."""
    if len(cells) < 3:
        return None
    ident = _CARD_ID.match(cells[0])
    if not ident or not re.fullmatch(r"[A-Za-z]+", cells[1]):
        return None
    tokens = _PAIR.sub(" ", cells[2]).split()
    pair = _PAIR.search(cells[2])
    return {
        "npu_id": int(ident["npu"]),
        "name": ident["name"].strip(),
        "health": cells[1],
        "power_w": _number(tokens[0]) if tokens else None,
        "temperature_c": _number(tokens[1]) if len(tokens) > 1 else None,
        "hugepages_used": int(pair[1]) if pair else None,
        "hugepages_total": int(pair[2]) if pair else None,
    }


def _chip_line(cells: list[str], has_hbm: bool, second_id: str) -> dict | None:
    """`| 0  8 | 0000:8D:00.0 | 0  0 / 0  51255/ 65536 |`: chip id (+ phy/device id), bus, AICore, memory."""
    if len(cells) < 3 or ":" not in cells[1]:
        return None
    ident = _CHIP_ID.match(cells[0])
    if not ident:
        return None
    pairs = [(int(a), int(b)) for a, b in _PAIR.findall(cells[2])]
    head = cells[2].split()
    chip = {
        "chip_id": int(ident["chip"]),
        second_id: int(ident["second"]) if ident["second"] is not None else None,
        "bus_id": cells[1],
        "aicore_pct": _number(head[0]) if head and not _PAIR.match(cells[2].strip()) else None,
        "memory_used_mb": None,
        "memory_total_mb": None,
        "hbm_used_mb": None,
        "hbm_total_mb": None,
    }
    if pairs and (not has_hbm or len(pairs) >= 2):
        chip["memory_used_mb"], chip["memory_total_mb"] = pairs[0]
    if has_hbm and pairs:
        chip["hbm_used_mb"], chip["hbm_total_mb"] = pairs[-1]
    return chip


def _process_line(cells: list[str]) -> dict | None:
    """`| 0  0 | 37656 | hlt_host_devmm_ | 686 |`; "No running processes found in NPU 0" yields nothing."""
    if len(cells) < 4:
        return None
    ident = _PROCESS_ID.match(cells[0])
    if not ident or not cells[1].isdigit():
        return None
    return {
        "npu_id": int(ident["npu"]),
        "chip_id": int(ident["chip"]),
        "pid": int(cells[1]),
        "name": cells[2],
        "memory_mb": _number(cells[3]),
    }


def _sum(chips: list[dict], key: str) -> int | None:
    values = [chip[key] for chip in chips if chip.get(key) is not None]
    return sum(values) if values else None


# The layouts handled were recorded on real hosts (see tests/data/npu-smi): Atlas 800 A2 (one chip per NPU,
# header "Chip"), A3 (two chips per NPU, header "Chip  Phy-ID", power "-" on the second chip), Ascend 310
# (header "Chip    Device", no HBM column) and older 910 boards (Memory-Usage and HBM-Usage both filled).
def parse_npu_smi_info(text: str) -> dict:
    """Parse `npu-smi info` output into chips, processes and totals.

    Lines that are not part of the tables (a shell prompt, an error, surrounding log text) are ignored, so an
    error text yields ``count == 0`` and the error is read with `npu_smi_errors`.
    """
    header = _HEADER.search(text)
    has_hbm, second_id = True, "phy_id"
    chips: list[dict] = []
    processes: list[dict] = []
    card: dict | None = None
    in_processes = False
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        if "Process id" in line:
            in_processes = True
            continue
        if line.lstrip("| ").startswith("Chip"):
            has_hbm = "HBM-Usage" in line
            second_id = "device_id" if "Device" in line.split("|")[1] else "phy_id"
            continue
        cells = _cells(line)
        if in_processes:
            process = _process_line(cells)
            if process:
                processes.append(process)
            continue
        parsed_card = _card_line(cells)
        if parsed_card:
            card = parsed_card
            continue
        chip = _chip_line(cells, has_hbm, second_id) if card else None
        if chip:
            chips.append({**card, **chip})
            card = None
    names = Counter(chip["name"] for chip in chips)
    return {
        "tool_version": header["tool"] if header else None,
        "version": header["version"] if header else None,
        "model": ",".join(name for name, _ in names.most_common()) or None,
        "count": len(chips),
        "npu_ids": sorted({chip["npu_id"] for chip in chips}),
        "chips": chips,
        "hbm_total_mb": _sum(chips, "hbm_total_mb"),
        "hbm_used_mb": _sum(chips, "hbm_used_mb"),
        "unhealthy": [chip for chip in chips if chip["health"] != "OK"],
        "processes": processes,
    }


def npu_smi_errors(text: str) -> list[dict]:
    """Recognised error lines in npu-smi output or in an Ascend runtime error: [{id, code, line, meaning}]."""
    found = []
    for line in text.splitlines():
        for error_id, pattern, meaning in BUSY_PATTERNS:
            match = pattern.search(line)
            if match:
                code = match.groupdict().get("code")
                found.append({"id": error_id, "busy": True, "code": code, "line": line.strip(), "meaning": meaning})
                break
        else:
            other = _OTHER_DCMI.search(line)
            if other:
                found.append(
                    {
                        "id": "dcmi_init_failed",
                        "busy": False,
                        "code": other["code"],
                        "line": line.strip(),
                        "meaning": "npu-smi could not open the device management interface",
                    }
                )
    return found
