"""The house: each stage imports only the stages below it, and says what it does at the top."""

from __future__ import annotations

import ast
import importlib

import pytest

from conftest import REPO

PACKAGE = REPO / "mse_train"
# Lowest first. A module may import its own stage and any stage to its left, never to its right.
STAGES = [
    "errors", "runtime", "config", "data", "models", "training",
    "outputs", "use", "recipe", "selection", "api", "cli",
]  # fmt: skip
# Leaves that any stage may use.
SHARED = {"errors", "runtime", "__init__"}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mse_train"):
            if node.module == "mse_train":
                yield from (f"mse_train.{alias.name}" for alias in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mse_train"))


def _module_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        yield ".".join(relative.parts), path


@pytest.mark.parametrize(("module", "path"), list(_module_files()), ids=lambda v: str(v))
def test_imports_flow_one_way(module, path):
    stage = _stage(module)
    if stage in ("__main__", "__init__"):
        return
    rank = STAGES.index(stage.removesuffix(".py"))
    for imported in _imports(path):
        other = _stage(imported)
        if other in SHARED or other == "__version__":
            continue
        assert STAGES.index(other) <= rank, f"{module} (stage {stage}) imports {imported} (stage {other})"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mse_train.training.loop import Loop\n")
    assert [_stage(m) for m in _imports(bad)] == ["training"]
    assert STAGES.index("training") > STAGES.index("data")  # so data/ importing it would fail above


@pytest.mark.parametrize(
    "stage", ["config", "data", "models", "training", "training.stack", "outputs", "use", "selection", "api"]
)
def test_each_stage_says_what_it_does(stage):
    doc = importlib.import_module(f"mse_train.{stage}").__doc__ or ""
    folder = stage.replace(".", "/")
    assert len(doc.splitlines()) >= 3, f"mse_train/{folder}/__init__.py needs a docstring naming its modules"
    for path in (PACKAGE / folder).glob("*.py"):
        if path.name != "__init__.py":
            assert path.name in doc, f"mse_train/{folder}/__init__.py does not mention {path.name}"


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of mse_train it imports (at the top, in a function, or for
    type checking alike); `from mse_train.use import onnx_nodes` names the module."""
    modules = dict(_module_files())
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mse_train"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("mse_train"))
        edges[module] = {m for m in found if m in modules and m != module}
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (a package's __init__ aside: it only names its modules)."""
    plain = {m: {o for o in out if not o.endswith("__init__")} for m, out in edges.items()}
    circles, done = [], set()
    for start in sorted(plain):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(plain.get(node, ())):
                if nxt == start:
                    circle = sorted(path)
                    if tuple(circle) not in done:
                        done.add(tuple(circle))
                        circles.append(path)
                elif nxt not in path and nxt > start:
                    stack.append((nxt, [*path, nxt]))
    return circles


def test_no_two_modules_import_each_other():
    """One way within a stage too: a module that imports another that imports it back (even
    for type checking) is one thing in two files."""
    circles = [c for c in _circles(_edges()) if not any(m.endswith("__init__") for m in c)]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ------------------------------------------------------------------ the stack, behind one door
STACK = "mse_train.training.stack"
STACK_FILES = {f"{STACK}.{p.stem}" for p in (PACKAGE / "training" / "stack").glob("*.py")} - {
    f"{STACK}.__init__"
}


def _stack_submodules_imported(path) -> list[str]:
    """The submodules of training/stack/ that the file at `path` imports by name
    (`from mse_train.training.stack.stacked import ...`, `from mse_train.training.stack import
    stacked`, `import mse_train.training.stack.stacked`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            named = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            named = [a.name for a in node.names]
        else:
            continue
        found += [m for m in named if m in STACK_FILES or m.startswith(tuple(f"{s}." for s in STACK_FILES))]
    return found


def _outside_the_stack():
    inside = PACKAGE / "training" / "stack"
    for folder in (PACKAGE, REPO / "tests", REPO / "bench"):
        for path in sorted(folder.rglob("*.py")):
            if inside not in path.parents:
                yield path


def test_the_stack_is_entered_only_through_its_door():
    """training/stack/ is an accelerator: everything else reaches it through its __init__
    (`from mse_train.training.stack import Stack`), so a reader who does not care about speed
    never opens the rest, and its files can change without a caller noticing."""
    assert STACK_FILES, "training/stack/ has modules"
    bad = {str(p.relative_to(REPO)): m for p in _outside_the_stack() if (m := _stack_submodules_imported(p))}
    assert not bad, f"imports of training/stack/'s insides (import from mse_train.training.stack): {bad}"


def test_the_door_check_catches_a_way_in(tmp_path):
    bad = tmp_path / "bad.py"
    for line in (
        "from mse_train.training.stack.stacked import Stack\n",
        "from mse_train.training.stack import optimizer\n",
        "import mse_train.training.stack.embeddings\n",
    ):
        bad.write_text(line)
        assert _stack_submodules_imported(bad), line
    bad.write_text("from mse_train.training.stack import Stack, why_alone\n")
    assert _stack_submodules_imported(bad) == []


# ------------------------------------------------------------------ the two model axes
MODULE_AXIS = "mse_train.training.module"
LOOP_ROOM = ("mse_train.training.loop", "mse_train.training.batches", "mse_train.training.keeping")


def _named(path) -> set[str]:
    """Every module name an import in the file names, `from a import b` as both a and a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def _reaches(path, module: str) -> bool:
    return any(n == module or n.startswith(f"{module}.") for n in _named(path))


def test_the_two_axes_and_the_loop_never_import_each_other():
    """The loop steps either model axis through the records they share (records.py): the
    module axis and the stack never import each other, and the loop's room imports neither."""
    training = PACKAGE / "training"
    stack_files = sorted((training / "stack").glob("*.py"))
    assert stack_files and (training / "module.py").exists()
    assert not _reaches(training / "module.py", STACK), "module.py imports the stack"
    for path in stack_files:
        assert not _reaches(path, MODULE_AXIS), f"{path.name} imports module.py"
    for name in LOOP_ROOM:
        path = training / f"{name.rsplit('.', 1)[1]}.py"
        assert path.exists(), path
        assert not (_reaches(path, STACK) or _reaches(path, MODULE_AXIS)), f"{path.name} imports a model axis"


def test_the_axes_check_catches_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    for line in ("from mse_train.training import stack\n", "from mse_train.training.stack import Stack\n"):
        bad.write_text(line)
        assert _reaches(bad, STACK), line
    bad.write_text("from mse_train.training import module\n")
    assert _reaches(bad, MODULE_AXIS)
    bad.write_text("from mse_train.training import records\n")
    assert not _reaches(bad, STACK) and not _reaches(bad, MODULE_AXIS)
