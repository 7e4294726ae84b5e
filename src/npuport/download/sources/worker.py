"""Child-process entry of a source's fetch: ``python -m npuport.download.sources.worker KIND REQUEST RESULT``.

The fetch runs apart from the stage so that the total deadline can kill it (and its download
threads) outright; the outcome comes back as a small JSON document.
"""

from __future__ import annotations

import sys
import traceback

from npuport.core.atomic import read_json, write_json
from npuport.core.errors import NpuportError
from npuport.download.sources.common import TransientError
from npuport.download.sources.registry import SOURCES


def run(kind: str, request_path: str, result_path: str) -> int:
    module = SOURCES[kind]
    try:
        document = {"status": "ok", "value": module.fetch_in_worker(read_json(request_path))}
    except TransientError as exc:
        document = {"status": "transient", "error": str(exc)}
    except NpuportError as exc:
        document = {"status": "error", "error": exc.problem if exc.path is None else str(exc)}
    except Exception as exc:  # classified by the source: network trouble is retried, the rest is not
        message = module.describe_error(exc)
        if message is None:
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"
        transient = module.is_transient(exc)
        document = {"status": "transient" if transient else "error", "error": message}
    write_json(result_path, document)
    return 0


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:4]))
