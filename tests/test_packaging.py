"""Everything imports under `reclaim`; nothing installs a bare `models` or `features`."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SUBPACKAGES = ["features", "models", "training", "serving", "simulator", "replay"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_top_level_folders_import_under_reclaim(name: str) -> None:
    module = importlib.import_module(f"reclaim.{name}")
    assert Path(module.__file__).parent == ROOT / name


def test_no_bare_top_level_packages_outside_the_checkout(tmp_path: Path) -> None:
    code = f"import importlib.util as u; print([n for n in {SUBPACKAGES!r} if u.find_spec(n)])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_wheel_contains_only_the_reclaim_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("reclaim-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"reclaim", next(t for t in tops if t.endswith(".dist-info"))}
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module and template of the checkout is in the wheel (an image installs the wheel:
    # a package left out of pyproject's list works in the editable checkout and nowhere else)
    shipped = {"reclaim": ROOT / "reclaim", **{f"reclaim/{p}": ROOT / p for p in SUBPACKAGES}}
    want = {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for prefix, folder in shipped.items()
        for pattern in ("*.py", "*.html", "*.mako")
        for path in folder.rglob(pattern)
        if "__pycache__" not in path.parts
    }
    assert want - names == set(), sorted(want - names)


#: What each part may not import: data flows features → models → training or serving, and
#: the replay composes the simulator with serving above both.
FORBIDDEN = {
    "features": ("models", "training", "serving", "simulator", "replay"),
    "models": ("training", "serving", "simulator", "replay"),
    "serving": ("simulator", "replay"),
    "simulator": ("serving", "replay"),
}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(part: str) -> None:
    import ast

    found = []
    for path in (ROOT / part).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if any(name.startswith(f"reclaim.{other}") for other in FORBIDDEN[part]):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not found, found


def test_the_project_cites_original_sources_only() -> None:
    """The docs stand alone: facts are cited from their original sources (docs/sources.md),
    never from a notes file outside the repository."""
    root = Path(__file__).parents[1]
    files = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    notes = "RESEARCH" + ".md"  # spelled apart so that this file does not cite it either
    citing = [
        f for f in files if (root / f).is_file() and notes in (root / f).read_text(errors="ignore")
    ]
    assert citing == [], citing
