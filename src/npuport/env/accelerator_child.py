"""The child interpreter probe_accelerators runs: torch.cuda and torch_npu facts, one JSON line on stdout."""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
import warnings


def _failure(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


def _cuda_facts(torch) -> dict:
    try:
        count = torch.cuda.device_count()
        return {
            "available": torch.cuda.is_available(),
            "device_count": count,
            "cuda_version": torch.version.cuda,
            "devices": [
                {
                    "name": torch.cuda.get_device_name(i),
                    "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                }
                for i in range(count)
            ],
        }
    except BaseException as exc:  # noqa: BLE001
        return {"error": _failure(exc)}


def _torch_npu_facts(torch) -> dict:
    npu: dict = {"installed": importlib.util.find_spec("torch_npu") is not None}
    if npu["installed"] and torch is not None:
        try:
            import torch_npu  # noqa: F401

            npu["import_ok"] = True
            npu["is_available"] = bool(torch.npu.is_available())
            npu["device_count"] = int(torch.npu.device_count())
            npu["names"] = [torch.npu.get_device_name(i) for i in range(npu["device_count"])]
        except BaseException as exc:  # noqa: BLE001
            npu.setdefault("import_ok", False)
            npu["error"] = _failure(exc)
    return npu


def accelerator_report() -> dict:
    """torch import error or torch.cuda facts, torch_npu facts, and the warnings raised on the way."""
    report: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch
        except BaseException as exc:  # noqa: BLE001 - a broken torch_npu autoload surfaces here
            report["torch_error"] = _failure(exc)
            torch = None
        if torch is not None:
            report["cuda"] = _cuda_facts(torch)
        report["torch_npu"] = _torch_npu_facts(torch)
    report["warnings"] = [str(w.message) for w in caught]
    return report


def main() -> None:
    # The JSON line on stdout is the protocol with the parent (probe_accelerators reads the last line), not a log.
    sys.stdout.write(json.dumps(accelerator_report()) + "\n")


if __name__ == "__main__":
    main()
