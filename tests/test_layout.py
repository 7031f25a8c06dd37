"""The house's layout (issue 13): rooms by role, layers pointing one way.

Every package's ``__init__`` docstring says what it owns and, on a line ``May import: ...``,
which other rooms it may import. These tests read every module's imports (top level, lazy
and TYPE_CHECKING ones alike) and hold the code to those lines, and to no import circles
between modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gatewayd

ROOT = Path(gatewayd.__file__).parent
# Top-level modules at the bottom of the layers import only these.
BOTTOM = {
    "gatewayd.errors": set(),
    "gatewayd.model": set(),
    "gatewayd.smstext": set(),
    "gatewayd.config": {"gatewayd.errors"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The gatewayd modules (or packages) a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "gatewayd":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gatewayd")
    return found


def _within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def _declared() -> dict[str, list[str]]:
    """package -> the rooms its docstring's 'May import:' line names."""
    out = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "gatewayd":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        m = re.search(r"^May import: (.*?)(?:;.*)?\.?$", doc, re.MULTILINE)
        assert m, f"{path}: the docstring needs a 'May import: ...' line"
        rooms = [w.strip().rstrip(".") for w in m.group(1).split(",")]
        out[name] = ["gatewayd." + r for r in rooms if r and r != "nothing"]
    return out


def test_every_package_says_what_it_owns_in_one_line() -> None:
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text("utf-8")))
            assert doc and doc.splitlines()[0].strip(), f"{name}: no one-line docstring"


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    edges = {m: {t for t in _imports(p) if t != m and t in MODULES} for m, p in MODULES.items()}
    # Package __init__ files re-export their modules; importing them is importing those.
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        seen[v] = 1
        stack.append(v)
        for w in sorted(edges[v]):
            if seen.get(w) == 1:
                cycles.append([*stack[stack.index(w):], w])
            elif w not in seen:
                visit(w)
        stack.pop()
        seen[v] = 2

    for v in sorted(edges):
        if v not in seen:
            visit(v)
    assert cycles == []


def test_rooms_import_only_what_their_docstring_allows() -> None:
    declared = _declared()
    problems = []
    for name, path in MODULES.items():
        # the deepest package holding this module
        owners = [p for p in declared if _within(name, p)]
        if owners:
            room = max(owners, key=len)
            allowed = [room, *declared[room]]
        elif name in BOTTOM:
            room, allowed = name, [name, *BOTTOM[name]]
        else:
            continue
        for target in sorted(_imports(path)):
            if target == "gatewayd":  # the root package: __version__
                continue
            if not any(_within(target, a) for a in allowed):
                problems.append(f"{name} imports {target}, not in {room}'s 'May import'")
    assert problems == []


def test_carrier_never_reaches_redis_policy_or_pipeline() -> None:
    for name, path in MODULES.items():
        if _within(name, "gatewayd.carrier"):
            for target in _imports(path):
                for banned in ("gatewayd.store", "gatewayd.policy", "gatewayd.pipeline"):
                    assert not _within(target, banned), f"{name} imports {target}"
