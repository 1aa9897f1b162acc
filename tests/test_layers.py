"""The import contract in pyproject.toml holds: transports -> codecs -> serving -> runtimes -> bundle -> errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_inward() -> None:
    executable = shutil.which("lint-imports")
    assert executable, "import-linter is part of the test extra"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([executable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(imports[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back() -> None:
    """No cycle between modules of ``ferry``: every import counts, deferred and ``TYPE_CHECKING`` ones too."""
    import grimp

    graph = grimp.build_graph("ferry")
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    cycles = _cycles(imports)
    where = [
        f"{a} -> {b} (line {graph.get_import_details(importer=a, imported=b)[0]['line_number']})"
        for group in cycles
        for a in group
        for b in sorted(imports[a] & set(group))
    ]
    assert cycles == [], "\n".join(where)


def test_the_cycle_finder_finds_a_cycle() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(imports) == [["a", "b", "c"]] and _cycles({"a": {"b"}, "b": set()}) == []
