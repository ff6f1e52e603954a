"""The floors of tsvllm's import graph, and the size of its files.

Every module under tsvllm/ is parsed with ``ast``; every ``import tsvllm.x`` and
``from tsvllm.x import`` (relative ones too, and those inside functions) is an arrow between
two *units*: tsvllm's top-level sub-packages and modules (``host``, ``worker``, ``contract``...).
``worker/`` runs inside TorchServe's worker, ``host/`` on the host that starts TorchServe,
``deploy/`` builds on ``host/``; what they share lives in the bottom floor.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "tsvllm"
MAX_LINES = 700

#: unit -> the units it must never import
FORBIDDEN = {
    # the host and the worker run in different processes: they share only config, the
    # bottom floor and the small shared modules (auth, errors), never each other's code
    "host": {"worker", "deploy", "cli", "bench"},
    "worker": {"host", "deploy", "cli", "bench"},
    # the engine seam knows nothing of TorchServe, hooks or the host
    "engine": {"worker", "host", "deploy", "config", "guards", "rag", "cli", "bench"},
    # usable without TorchServe
    "rag": {"worker", "host", "deploy", "cli", "bench"},
    "guards": {"worker", "host", "deploy", "cli", "bench"},
    # plain data: vLLM's args are checked by the engine module, guards import the config
    "config": {"engine", "guards", "rag", "worker", "host", "deploy", "cli", "bench"},
    "deploy": {"worker", "cli", "bench"},
}
#: shared protocols and constants: they import nothing of tsvllm but each other
BOTTOM = {"urls", "contract", "drain", "metrics_files", "textfold", "headers"}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, imported tsvllm module)`` for every import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # from tsvllm import urls: the module tsvllm.urls
                if is_module(f"{target}.{alias.name}"):
                    yield node.lineno, f"{target}.{alias.name}"


def arrows() -> list[tuple[str, str, str]]:
    """``(from unit, to unit, where)`` for every import between two different units."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        source = unit_of(module_name(path))
        if path == ROOT / "__init__.py":
            continue  # the lazy facade for handler authors (names resolved on first use)
        for line, target in imports_of(path):
            if target.split(".")[0] != "tsvllm" or target == "tsvllm":
                continue
            if unit_of(target) != source:
                where = f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
                out.append((source, unit_of(target), where))
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for source, target, _ in arrows():
        edges.setdefault(source, set()).add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_code():
    """The arrows the rules below rely on are really found (so the test can fail)."""
    found = {(a, b) for a, b, _ in arrows()}
    assert {("host", "contract"), ("deploy", "contract"), ("worker", "drain")} <= found
    assert ("guards", "config") in found and ("deploy", "host") in found
    assert ("cli", "demo_models") in found  # only imported inside a function body


def test_no_forbidden_arrow():
    bad = [
        where
        for source, target, where in arrows()
        if target in FORBIDDEN.get(source, ()) or (source != "cli" and target == "cli")
    ]
    assert not bad, "\n".join(bad)


def test_the_bottom_floor_imports_only_the_bottom_floor():
    bad = [where for source, target, where in arrows() if source in BOTTOM and target not in BOTTOM]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_units():
    assert cycles(graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_product_file_over_700_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines; split it"
