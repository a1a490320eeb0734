"""The house rules of the code's layout, checked on the source: who may import whom, no cycles, docstrings.

Every module of daemon/ and pipeline/ is parsed with ast (nothing is imported, so the test is fast and
needs no torch). Imports are found at any depth: module level, inside functions (the deferred imports
that keep torch out of the janitor and the watcher), under `if TYPE_CHECKING:`. A failure names the
module, the line and the import.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "pipeline")

# The only pipeline modules daemon/ may import, and why. The engines' own modules (pipeline.engines.base,
# .registry, .builtin.*, .wav2lip.*, ...) are not on the list: the daemon sees engines only through the
# interface that pipeline/engines/__init__.py exports, so a backend can be rewritten without touching it.
DAEMON_MAY_IMPORT = {
    "pipeline.engines": "the engine interface: get_engine, JobSpec, RenderResult, EngineError (worker, render, "
                        "doctor)",
    "pipeline.errors": "EngineError alone, for code that needs the error but no engine (`lipsyncd sync-score`)",
    "pipeline.syncscore": "the engine-independent sync score of any output (the worker's record, sync-score)",
    "pipeline.devices": "turning `auto`/`cuda:N` into a device before an engine is made (worker, render, doctor)",
    "pipeline.media.probe": "what ffprobe says about a file, without an engine or torch (for checks outside an "
                            "engine; daemon/ does not use it today)",
}
# Pipeline modules below the engines: they serve every engine, so they never depend on one.
BELOW_ENGINES = ("pipeline.media", "pipeline.face", "pipeline.lips", "pipeline.mouthfinder", "pipeline.syncscore",
                 "pipeline.devices", "pipeline.errors")
# The sync score places the mouth its own way: were it to use the engines' lip locator, it would share
# that locator's mistakes and score a misplaced mouth as in sync.
SCORE = ("pipeline.syncscore", "pipeline.mouthfinder")
# A first line "is a sentence": one line that ends with . ? or !, of three words or more, starting with a
# capital, a backtick, or a name written in lower case (sd_notify(3), lipsyncd's).
SENTENCE = re.compile(r"(?:[A-Z`\"]|[a-z]\w*[_('.])\S*(?: \S+){2,}[.?!]\Z")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (a submodule when `from package import submodule`)
    line: int
    deferred: bool  # inside a function: runs when called, not when the module is imported
    type_only: bool  # under `if TYPE_CHECKING:`: never runs

    def __str__(self) -> str:
        return f"{module_path(self.module)}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> str:
    path = ROOT / Path(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


@functools.cache
def sources() -> dict[str, ast.Module]:
    """Every module of the packages, parsed: {dotted name: tree}."""
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert files, f"no modules found under {ROOT}"
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in files}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(nodes, deferred: bool, type_only: bool):
    """Every import node among *nodes* and below, with whether it sits in a function and under TYPE_CHECKING."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, deferred, type_only
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(ast.iter_child_nodes(node), True, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, deferred, True)
            yield from _walk(node.orelse, deferred, type_only)
        else:
            yield from _walk(ast.iter_child_nodes(node), deferred, type_only)


def imports_of(name: str, tree: ast.Module, known: set[str] | dict[str, ast.Module]) -> list[Import]:
    """The imports of daemon or pipeline modules in module *name*, resolved to the modules they name."""
    package = name if module_path(name).endswith("__init__.py") else name.rpartition(".")[0]
    found = []
    for node, deferred, type_only in _walk(tree.body, False, False):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..jobs import spool
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import submodule` imports the submodule; `from module import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in PACKAGES:
                found.append(Import(name, target, node.lineno, deferred, type_only))
    return found


@functools.cache
def imports() -> list[Import]:
    """Every import of a daemon or pipeline module by another."""
    known = sources()
    return [i for name, tree in known.items() for i in imports_of(name, tree, known)]


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _report(what: str, bad: list[str]) -> str:
    return f"{what}:\n  " + "\n  ".join(bad)


def test_the_pipeline_never_imports_the_daemon() -> None:
    """The pipeline knows nothing of inboxes, queues or systemd: `lipsyncd render` and the engines' tests run
    it alone, and an engine can be reused elsewhere."""
    bad = [str(i) for i in imports() if _within(i.module, "pipeline") and _within(i.target, "daemon")]
    assert not bad, _report("pipeline/ must not import daemon/", bad)


def test_shared_pipeline_modules_never_import_the_engines() -> None:
    """Media I/O, face tracking, the sync score, devices and errors serve every engine; importing an engine
    from them would make a cycle in spirit (and load torch where a command engine needs none)."""
    bad = [str(i) for i in imports()
           if any(_within(i.module, low) for low in BELOW_ENGINES) and _within(i.target, "pipeline.engines")]
    assert not bad, _report(f"{', '.join(BELOW_ENGINES)} must not import pipeline.engines", bad)


def test_the_sync_score_does_not_use_the_engines_lip_locator() -> None:
    """The score's mouth comes from pipeline.mouthfinder, never from pipeline.lips (see SCORE)."""
    bad = [str(i) for i in imports() if any(_within(i.module, score) for score in SCORE)
           and _within(i.target, "pipeline.lips")]
    assert not bad, _report("the sync score must not import pipeline.lips", bad)


def test_the_daemon_reaches_the_pipeline_only_through_its_interface() -> None:
    """The daemon uses engines, not their insides: which modules it may import, and why, is DAEMON_MAY_IMPORT."""
    bad = [f"{i} (allowed: {', '.join(DAEMON_MAY_IMPORT)})" for i in imports()
           if _within(i.module, "daemon") and _within(i.target, "pipeline") and i.target not in DAEMON_MAY_IMPORT]
    assert not bad, _report("daemon/ may import only these pipeline modules", bad)


# The daemon's rooms, lowest first. A room may import rooms below it (and its own modules), never above:
# the shared words (names, files, config, log, disk, sdnotify) serve everyone; notify speaks for the jobs and
# the janitor; jobs run what the inbox claimed; the inbox claims into the spool and puts ids on the queue;
# the janitor reads the spool's layout from names; the service and the commands sit on top.
DAEMON_ROOMS = [
    ("shared words", ("daemon.names", "daemon.files", "daemon.config", "daemon.log", "daemon.disk",
                      "daemon.sdnotify", "daemon.access")),
    ("notify", ("daemon.notify",)),
    ("jobs", ("daemon.jobs",)),
    ("inbox", ("daemon.inbox",)),
    ("janitor", ("daemon.janitor",)),
    ("service and commands", ("daemon.service", "daemon.cli", "daemon.commands", "daemon.web")),
]


def _room(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(DAEMON_ROOMS):
        if any(_within(module, prefix) for prefix in prefixes):
            return rank
    return None


def test_daemon_rooms_import_only_rooms_below_them() -> None:
    """Arrows run one way: the jobs room never reaches back into the inbox that feeds it, notify and the shared
    words know no room above them, and nothing below the service and the commands imports them."""
    unplaced = sorted({name for name in sources() if _within(name, "daemon") and name != "daemon"
                       and _room(name) is None})
    assert not unplaced, _report("modules in no room (add them to DAEMON_ROOMS)", unplaced)
    bad = []
    for i in imports():
        mine, theirs = _room(i.module), _room(i.target)
        if mine is not None and theirs is not None and theirs > mine and not i.type_only:
            bad.append(f"{i} ({DAEMON_ROOMS[mine][0]} must not import {DAEMON_ROOMS[theirs][0]})")
    assert not bad, _report("a room imports a room above it", bad)


def test_the_allowed_pipeline_modules_exist() -> None:
    """A rename must update the list above, not leave a name that allows nothing (or something else later)."""
    missing = [name for name in DAEMON_MAY_IMPORT if name not in sources()]
    assert not missing, f"DAEMON_MAY_IMPORT names modules that do not exist: {missing}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of *graph* with more than one module, or one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest import path from the component's first module back to itself, both ends included."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def test_no_import_cycles_at_module_level() -> None:
    """Modules must form layers: a cycle means neither can be understood, tested or moved without the other,
    and which half-initialised module the other sees depends on who was imported first.

    Only imports that run when a module is imported count. An import inside a function runs when the function
    is called, after every module has finished loading, so it can never meet a half-initialised module; such
    deferred imports are how torch stays out of the janitor, the watcher and `lipsyncd status`, and they are
    still held to the layering rules above. `if TYPE_CHECKING:` imports never run at all.
    A package's __init__ that re-exports its submodules (daemon.janitor, pipeline.engines) is not an edge
    from every submodule back to the package: `from daemon.janitor import plan` needs only the submodule."""
    graph: dict[str, set[str]] = {name: set() for name in sources()}
    lines: dict[tuple[str, str], Import] = {}
    for i in imports():
        if i.deferred or i.type_only or i.target not in graph:
            continue
        graph[i.module].add(i.target)
        lines.setdefault((i.module, i.target), i)
    bad = []
    for component in strongly_connected(graph):
        path = shortest_cycle(graph, component)
        steps = "; ".join(str(lines[(a, b)]) for a, b in zip(path, path[1:], strict=False))
        bad.append(f"{' -> '.join(path)}  ({steps}; all modules in this knot: {', '.join(component)})")
    assert not bad, _report("import cycles among module-level imports", bad)


def test_every_module_says_in_one_sentence_what_it_holds() -> None:
    bad = []
    for name, tree in sources().items():
        doc = ast.get_docstring(tree, clean=True)
        if not doc:
            bad.append(f"{module_path(name)}: no module docstring")
            continue
        lines = doc.splitlines()
        if not SENTENCE.match(lines[0]):
            bad.append(f"{module_path(name)}: first line is not one sentence: {lines[0]!r}")
        elif len(lines) > 1 and lines[1].strip():
            bad.append(f"{module_path(name)}: the first sentence runs on to a second line (leave a blank line "
                       f"after it): {lines[1]!r}")
    assert not bad, _report("every module starts with a one-line docstring sentence saying what it holds", bad)


def test_the_parser_sees_every_kind_of_import() -> None:
    """The checks above are only as good as this: function-level, TYPE_CHECKING, `from package import
    submodule`, relative and nested imports are all found, each with where it runs."""
    tree = ast.parse(textwrap.dedent("""
        from __future__ import annotations
        import os
        from typing import TYPE_CHECKING
        from daemon.jobs import spool, names_that_are_not_modules
        from . import queue
        from ..janitor.plan import Plan
        if TYPE_CHECKING:
            from pipeline.engines.base import Engine
        try:
            import pipeline.media.probe
        except ImportError:
            pass
        class Holder:
            from pipeline import errors
            def method(self):
                from pipeline.engines.builtin import engine
                return lambda: __import__("os")
        def render():
            if True:
                from pipeline.engines import get_engine
    """))
    known = {"daemon.jobs", "daemon.jobs.spool", "daemon.jobs.queue", "daemon.janitor.plan",
             "pipeline.engines.builtin.engine", "pipeline.errors", "pipeline.media.probe"}
    found = {(i.target, i.deferred, i.type_only) for i in imports_of("daemon.jobs.reaper", tree, known)}
    assert found == {
        ("daemon.jobs.spool", False, False), ("daemon.jobs", False, False), ("daemon.jobs.queue", False, False),
        ("daemon.janitor.plan", False, False), ("pipeline.engines.base", False, True),
        ("pipeline.media.probe", False, False), ("pipeline.errors", False, False),
        ("pipeline.engines.builtin.engine", True, False), ("pipeline.engines", True, False),
    }


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert shortest_cycle(graph, ["d"]) == ["d", "d"]
