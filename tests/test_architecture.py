"""The shape of the package, checked: layers import only downward, no import hides a cycle,
no function grows past 80 lines, no module past 450, no import circle inside a package, and
the command-line words stay in cli/ (at most ten strings elsewhere name a ``--flag``).

Layers, bottom to top (README, "Architecture"):

    0 core        errors, fileio, audio, progress, constants, devices
    1 front-ends  features.frontends
    2 datasets | models (models, models.checkpoint, pretrained)
    3 store       features.store
    4 training | tagging
    5 evaluation (tag's prediction path + training's metrics) | pipeline (prepare -> extract)
    6 cli
    7 testing     helpers for tests and benchmarks (audiocnn.testing): may import anything,
                  nothing else in audiocnn imports it

A module may import from its own layer group and from any lower layer, never from a
higher one nor from a sibling group of its layer (datasets <-> models, training <->
tagging, evaluation <-> pipeline). Function-local imports count like any other, and each
must say on its line why it is deferred (``# deferred: ...``: a heavy or optional
dependency, or the CLI's start-up time), so none can hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from audiocnn.testing.source import flag_strings

PACKAGE = Path(__file__).resolve().parents[1] / "audiocnn"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
#: Modules allowed over MAX_MODULE_LINES, each with its reason.
LONG_MODULES = {
    # one job (reading TensorFlow's checkpoint format without TensorFlow), told in one place
    "audiocnn.pretrained.tf_bundle": "the TF checkpoint reader keeps one job",
}

# (module prefix, layer, group); the longest matching prefix wins
LAYERS = [
    ("audiocnn", 0, "core"),
    ("audiocnn.features", 1, "frontends"),
    ("audiocnn.features.frontends", 1, "frontends"),
    ("audiocnn.datasets", 2, "datasets"),
    ("audiocnn.models", 2, "models"),
    ("audiocnn.pretrained", 2, "models"),
    ("audiocnn.features.store", 3, "store"),
    ("audiocnn.training", 4, "training"),
    ("audiocnn.tagging", 4, "tagging"),
    ("audiocnn.evaluation", 5, "evaluation"),
    ("audiocnn.pipeline", 5, "pipeline"),
    ("audiocnn.cli", 6, "cli"),
    ("audiocnn.__main__", 6, "cli"),
    ("audiocnn.testing", 7, "testing"),
]
CORE = {
    "audiocnn.accelerators",
    "audiocnn.checkpoint_file",
    "audiocnn.zoo",
    "audiocnn",
    "audiocnn.errors",
    "audiocnn.fileio",
    "audiocnn.audio",
    "audiocnn.audio_pool",
    "audiocnn.workers",
    "audiocnn.progress",
    "audiocnn.constants",
    "audiocnn.devices",
    "audiocnn.configio",
    "audiocnn.splits",
    "audiocnn.shards",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")), key=lambda p: len(p[0]))
    return best[1], best[2]


def imports(path: Path) -> list[tuple[int, str, bool, str]]:
    """(line, imported audiocnn module, function-local?, source line) of every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    local_nodes = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from audiocnn.features import store` imports the submodule
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        src = " ".join(lines[node.lineno - 1 : node.end_lineno])
        above = _deferral_above(lines, node.lineno - 1)
        if above:
            src = f"{src} {above}"
        for t in targets:
            out.append((node.lineno, t, id(node) in local_nodes, src))
    return out


def _deferral_above(lines: list[str], index: int) -> str:
    """The ``# deferred:`` comment a block of imports shares: on the line above the block
    (a comment line) or on an import line of the block above this one."""
    i = index - 1
    while i >= 0:
        text = lines[i].strip()
        if "# deferred:" in text:
            return text
        if not (text.startswith(("from ", "import ", ")")) or text.endswith(",")):
            return ""
        i -= 1
    return ""


def test_layer_map_covers_every_module():
    for name in MODULES:
        layer, group = layer_of(name)
        if layer == 0:
            assert name in CORE, f"{name} is not assigned to a layer (add it to LAYERS or CORE)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    layer, group = layer_of(module)
    bad = []
    for line, target, _local, _src in imports(MODULES[module]):
        if not target.startswith("audiocnn"):
            continue
        t_layer, t_group = layer_of(target)
        if t_layer > layer or (t_layer == layer and t_group != group):
            bad.append(f"line {line}: {target} ({t_group}, layer {t_layer})")
    assert not bad, f"{module} ({group}, layer {layer}) imports upward or sideways: " + "; ".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_local_imports_say_why(module):
    bad = [
        f"line {line}: {src.strip()}"
        for line, _t, local, src in imports(MODULES[module])
        if local and "# deferred:" not in src
    ]
    assert not bad, f"{module}: function-local imports without a '# deferred: <why>' comment: " + "; ".join(bad)


def test_no_function_exceeds_the_line_limit():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({n} lines, line {node.lineno})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The layer check is not vacuous: a datasets module importing the store is caught."""
    fake = tmp_path / "audiocnn" / "datasets" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from audiocnn.features.store import open_store\n    return open_store\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "audiocnn", raising=False)
    found = imports(fake)
    assert found == [(2, "audiocnn.features.store", True, "    from audiocnn.features.store import open_store")]
    layer, group = layer_of("audiocnn.datasets.x")
    t_layer, _ = layer_of(found[0][1])
    assert t_layer > layer


def test_no_module_exceeds_the_line_limit():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES and name not in LONG_MODULES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"
    stale = [
        name
        for name in LONG_MODULES
        if name not in MODULES or len(MODULES[name].read_text().splitlines()) <= MAX_MODULE_LINES
    ]
    assert not stale, f"allowed to be long but no longer are (drop them from LONG_MODULES): {stale}"


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of its own package it imports (type-checking and
    function-local imports included: a cycle they hide is still a cycle)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        package = _package_of(name)
        graph[name] = {
            target
            for _line, target, _local, _src in imports(path)
            if target in MODULES and target != name and _package_of(target) == package
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at the
    end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_inside_a_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_check_sees_a_circle_behind_type_checking(tmp_path):
    """A circle hidden behind ``if TYPE_CHECKING:`` is still found."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from audiocnn.datasets.spec import X\n")
    assert [t for _l, t, _local, _s in imports(a)] == ["typing", "audiocnn.datasets.spec"]
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


#: strings outside cli/ that may name a --flag: another program's (``pip install --no-deps``)
#: or the version to report (``audiocnn --version``); the library names its arguments instead
#: (``force=True``, `` `data_dir` ``) and its next calls (``prepare('gtzan', force=True)``),
#: and cli/ shows them as flags and commands (audiocnn.cli.common)
MAX_FLAG_STRINGS = 10


#: where command-line words belong: the CLI, and the helpers that drive it in tests and benchmarks
SPEAK_CLI = {"cli", "testing"}


def test_few_strings_outside_the_cli_name_a_flag():
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text[:80]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not SPEAK_CLI & set(path.relative_to(PACKAGE).parts)
        for line, text in flag_strings(path)
    ]
    assert len(found) <= MAX_FLAG_STRINGS, (
        f"{len(found)} strings outside cli/ name a --flag (at most {MAX_FLAG_STRINGS}): name the argument "
        "(`name`, name=value) or the next call (audiocnn.errors.next_call) and list it in arguments=; "
        "cli/ shows them as flags:\n" + "\n".join(found)
    )


def test_the_flag_count_sees_a_flag(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docs may say --force."""\n\n\ndef f(x):\n    """So may --resume."""\n'
        '    log.info("use --force to prepare it again", x)\n    raise ValueError(f"--device {x}: no such device")\n'
    )
    assert sorted(flag_strings(bad)) == [(6, "use --force to prepare it again"), (7, "--device : no such device")]
    assert flag_strings(PACKAGE / "pretrained" / "catalog.py"), "pip's --no-deps is counted among the ten"
