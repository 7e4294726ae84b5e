"""Hash of the library code a stage's script reaches, passed to its rule as a param.

Snakemake reruns a job when its script changes, not when a module the script imports does. The
modules are found by reading import statements (at any depth, also inside functions), starting
from the script, so no hand-kept list can miss one; the hash, given as a ``params:`` value, makes a
change of any of them a rerun reason.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "npuport"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Files that ship inside a package and change what a stage writes (report templates, message catalogs).
DATA_DIRS = ("templates",)


def _module_file(name: str) -> Path | None:
    """Source file of the npuport module ``name`` (a package's ``__init__.py``), None when there is none."""
    parts = name.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(path: Path) -> frozenset[str]:
    """Dotted npuport module names that ``path`` imports (``from npuport.x import y`` yields ``npuport.x.y`` too:
    ``y`` may be a module)."""
    return _names_in_source(path.read_bytes(), str(path))


@functools.cache
def _names_in_source(source: bytes, filename: str) -> frozenset[str]:
    """The parse behind ``_imported_names``, once per distinct file content in a process: a Snakemake run hashes
    every stage's closure, and the closures share most modules (each parsed once instead of ~3 times)."""
    names: set[str] = set()
    for node in _statements(ast.parse(source, filename=filename).body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        parts = name.split(".")
        # the packages on the way are executed by the import too
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(found)


def _statements(body: list[ast.AST]):
    """Every statement of ``body``, nested ones included (an import is a statement, and statements sit only in these
    fields: function, class, if, loop, with, try and match bodies): the expressions, most of a tree, are not walked."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, field, None) or [])


def import_closure(script: str | Path) -> list[Path]:
    """Every npuport source file that ``script`` reaches through imports, sorted."""
    seen: set[Path] = set()
    queue = [Path(script)]
    while queue:
        for name in _imported_names(queue.pop()):
            path = _module_file(name)
            if path is not None and path not in seen:
                seen.add(path)
                queue.append(path)
    return sorted(seen)


def _data_files(modules: list[Path]) -> list[Path]:
    dirs = {module.parent / data for module in modules for data in DATA_DIRS}
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


def code_hash(script: str | Path) -> str:
    """sha256 (first 16 hex digits) over the npuport modules ``script`` reaches and their packages' data files."""
    digest = hashlib.sha256()
    modules = import_closure(script)
    for path in modules + _data_files(modules):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
