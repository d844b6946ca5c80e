"""The import structure: the contracts in pyproject.toml hold, and no module imports itself back.

The contracts ([tool.importlinter]) say who may import whom: services never import each other,
the core library and the SDK never import the ML stack, faust or the CLI. The cycle check covers
imports under ``TYPE_CHECKING`` too: a route module that needs its service's bootstrap only for a
type hint is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[3]


def _root_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["root_packages"])


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*_root_packages(), exclude_type_checking_imports=False)
    cycles: dict[frozenset[str], str] = {}
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module or imported not in graph.modules:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                # A package's __init__ re-exporting its own modules is not a cycle a reader untangles.
                if module.startswith(imported + ".") or imported.startswith(module + "."):
                    continue
                cycles.setdefault(frozenset(back), " -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles.values()))
