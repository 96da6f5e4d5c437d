"""The house rules of streams/, as tests: no import cycles, a light SDK, no laptop stack in
production code, and commands that say which extra they need.

The import graph is read from the source (every ``import`` statement, also the ones inside
functions, since a lazy import only hides a cycle), so a new module is checked as soon as it
exists.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "streams"

#: third-party packages of the server side: never in the SDK or the base install
SERVER_PACKAGES = (
    "faust",
    "mode",
    "aiokafka",
    "chdb",
    "clickhouse_connect",
    "polars",
    "pyarrow",
    "numpy",
    "uvloop",
    "prometheus_client",
)
#: rooms the SDK must not reach, directly or through what it imports
SERVER_ROOMS = ("streams.worker", "streams.sink", "streams.query", "streams.local")
#: the only production modules that may import the laptop stack: its own room, and the demo's
#: run, which starts it (``spendstream local`` and ``spendstream demo`` are the CLI that runs it)
LOCAL_STACK_USERS = ("streams.local", "streams.demo.run")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
#: every folder of streams/ is a room, entered through one door (its __init__): found on disk,
#: so a new folder is checked as soon as it exists
ROOMS = sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != "streams")
#: the modules other rooms still import past a door, each for a reason; a new one fails
SIDE_DOORS = {
    # the SDK imports the serde door: it must not load polars and pyarrow
    "streams.serde.columnar": "the server side's batch decoder (polars, pyarrow)",
    # streams.processors has no door: budgets' light commands use periods and alerts, and a
    # door importing stage 1 would load polars into them (a door naming only the light modules
    # is the next step)
    "streams.processors.alerts": "alert ids and amounts (budgets, the load-test checker)",
    "streams.processors.checkpoint": "the worker's checkpoints",
    "streams.processors.detectors": "threshold crossings (the load-test checker)",
    "streams.processors.periods": "calendar periods (budgets, the worker's sink view)",
    "streams.processors.stage1": "the worker's stage 1",
    "streams.processors.stage2": "the worker's stage 2",
}


def _imports(path: Path) -> Iterator[str]:
    """Every module name an import statement in ``path`` names (absolute or relative)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _resolve(name: str) -> str | None:
    """The streams module ``name`` refers to (a module, or the package an attribute is in)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for name in _imports(path):
            if name.split(".")[0] != "streams":
                continue
            target = _resolve(name)
            # a package's own submodules are not an edge back to it (Python loads them inside it)
            if target and target != module and not module.startswith(target + "."):
                edges.add(target)
        graph[module] = edges
    return graph


def _third_party(module: str) -> set[str]:
    return {
        name.split(".")[0]
        for name in _imports(MODULES[module])
        if name and name.split(".")[0] != "streams"
    }


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(graph[module])
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]))
    return seen


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in colour and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_package() -> None:
    graph = _graph()
    assert "streams.sdk.producer" in graph
    assert "streams.serde" in graph["streams.sdk.producer"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_streams() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_sdk_imports_nothing_of_the_server_side() -> None:
    graph = _graph()
    sdk = [m for m in MODULES if m == "streams.sdk" or m.startswith("streams.sdk.")]
    assert len(sdk) >= 4
    for module in sdk:
        reached = _reachable(graph, module)
        rooms = sorted(m for m in reached if m.startswith(SERVER_ROOMS))
        assert not rooms, f"{module} reaches {rooms}"
        packages = set().union(*(_third_party(m) for m in reached))
        assert not packages & set(SERVER_PACKAGES), f"{module} imports {packages}"


def test_production_code_never_imports_the_local_stack() -> None:
    for module, edges in _graph().items():
        if module.startswith(LOCAL_STACK_USERS):
            continue
        assert not [e for e in edges if e.startswith("streams.local")], module


def test_every_folder_is_a_room() -> None:
    folders = sorted(p.parent for p in PACKAGE.glob("*/*.py") if "__pycache__" not in p.parts)
    assert {_module_name(f / "__init__.py") for f in folders} == set(ROOMS)
    assert {"streams.processors", "streams.query", "streams.serde", "streams.local"} <= set(ROOMS)
    assert set(SIDE_DOORS) <= set(MODULES)


def test_every_room_is_entered_through_its_door() -> None:
    """Other rooms import a package's ``__init__``, not its modules (the CLI's commands and
    SIDE_DOORS excepted)."""
    used = set()
    for module, path in MODULES.items():
        for name in _imports(path):
            target = _resolve(name)
            if target is None or module == "streams.cli":
                continue
            for room in ROOMS:
                inside = module == room or module.startswith(room + ".")
                if inside or not target.startswith(room + "."):
                    continue
                assert target in SIDE_DOORS, f"{module} imports {target}, not {room}"
                used.add(target)
    assert used == set(SIDE_DOORS), f"side doors no longer used: {set(SIDE_DOORS) - used}"


#: run in a fresh interpreter where the server packages cannot be imported, as after
#: `pip install spendstream` without extras
_BASE_INSTALL = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import streams.sdk
    from streams.sdk import TokenEventProducer, build_event
    event = build_event(org_id="o", team_id="t", user_id="u", client="c", provider="anthropic",
                        model="claude-sonnet-4-5", input_tokens=1)
    from streams.serde import AvroCodec
    assert AvroCodec("token_event").decode(AvroCodec("token_event").encode(event))
    from click.testing import CliRunner
    from streams.cli import main
    runner = CliRunner()
    for args in (["--help"], ["budgets", "--help"], ["budgets", "set", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    result = runner.invoke(main, ["worker"])
    print("WORKER:", result.exit_code, result.output.strip())
    result = runner.invoke(main, ["report", "spend"])
    print("REPORT:", result.exit_code, result.output.strip())
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print("LOADED:", loaded)
    """
)


def test_the_base_install_runs_the_sdk_and_light_commands_without_server_packages() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BASE_INSTALL, ",".join(SERVER_PACKAGES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["LOADED"] == "[]"
    worker_code, _, worker_text = lines["WORKER"].partition(" ")
    assert worker_code == "1"
    assert worker_text.count("\n") == 0
    assert "pip install 'spendstream[worker]'" in worker_text
    assert "pip install 'spendstream[sink]'" in lines["REPORT"]


@pytest.mark.parametrize("room", ["streams.sdk", "streams.budgets", "streams.worker"])
def test_each_door_names_what_others_may_use(room: str) -> None:
    tree = ast.parse(MODULES[room].read_text())
    exported = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert exported, f"{room}/__init__.py has no __all__"


def test_test_modules_have_unique_basenames() -> None:
    """pytest imports test files by basename (no packages under tests/): two of one name stop
    the whole suite's collection, which a run of one folder does not show."""
    root = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("test_*.py")):
        other = seen.setdefault(path.name, path)
        assert other == path, f"{path.relative_to(root)} and {other.relative_to(root)}"
