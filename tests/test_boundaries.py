"""The import boundaries of the layout: models/ <- worker/ -> core/ <- api/. Each check runs
in a fresh interpreter, so what one test imported cannot hide what another module pulls in."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {m.split(".")[0] for m in out.stdout.split()}


def test_core_imports_neither_torch_nor_fastapi() -> None:
    every_core_module = "; ".join(
        f"import core.{p.stem}"
        for p in sorted((ROOT / "core").glob("*.py"))
        if p.stem != "__init__"
    )
    loaded = modules_loaded_by(every_core_module)
    assert "torch" not in loaded
    assert "fastapi" not in loaded and "starlette" not in loaded


def test_the_api_never_loads_torch() -> None:
    loaded = modules_loaded_by("import api.main")
    assert "torch" not in loaded
    assert "worker" not in loaded and "models" not in loaded


def imported_packages(folder: str) -> dict[str, set[str]]:
    """Top-level packages each file of `folder` imports, read from the source (lazy imports
    inside functions included)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("core", {"api", "worker", "models", "torch", "fastapi", "starlette", "client"}),
        ("api", {"worker", "models", "torch"}),
        ("worker", {"api", "fastapi", "starlette"}),
        ("models", {"api", "core", "worker", "sqlalchemy", "celery", "fastapi"}),
        # the instrument maths shared by the worker and gradlab.watch: torch only
        (
            "gradlab/instruments",
            {"api", "core", "worker", "sqlalchemy", "celery", "fastapi", "httpx"},
        ),
    ],
)
def test_no_file_imports_across_a_boundary(folder: str, forbidden: set[str]) -> None:
    crossing = {f: sorted(n & forbidden) for f, n in imported_packages(folder).items()}
    assert {f: n for f, n in crossing.items() if n} == {}


def test_route_modules_do_not_import_each_other() -> None:
    routes = imported_packages("api/routes")
    for path in (ROOT / "api" / "routes").glob("*.py"):
        tree = ast.parse(path.read_text())
        siblings = [
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("api.routes")
        ]
        assert siblings == [], f"{path.name} imports {siblings}"
    assert routes  # the folder was read


def test_the_user_package_needs_httpx_only() -> None:
    """`pip install gradlab` without the worker: no torch, no server libraries on import."""
    loaded = modules_loaded_by("import gradlab, gradlab.cli")
    assert not loaded & {"torch", "fastapi", "starlette", "sqlalchemy", "celery", "core", "api"}
