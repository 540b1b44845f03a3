"""The installed layout: the tree is the import path (distillkit/ the only top-level package), no package is left
out, and the shipped recipes are package data."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_none_is_mapped():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "distillkit").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert listed <= found, f"{sorted(listed - found)} in [tool.setuptools] packages has no folder with an __init__.py"
    assert "package-dir" not in tool, "the tree is the import path: no package is mapped in from another folder"
    assert {"distillkit.cli", "distillkit.pipelines"} <= listed and {p.split(".")[0] for p in listed} == {"distillkit"}
    assert not (ROOT / "cli").exists() and not (ROOT / "pipelines").exists()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["distillkit"] == "distillkit.cli.main:main"


def test_namespace_imports_resolve_to_the_repository_folders():
    import distillkit.cli.main
    import distillkit.pipelines.recipe

    assert Path(distillkit.cli.main.__file__).parent == ROOT / "distillkit" / "cli"
    assert Path(distillkit.pipelines.recipe.__file__).parent == ROOT / "distillkit" / "pipelines"


def test_shipped_recipes_are_package_data():
    """`distillkit run demo` and `distillkit study NAME` find their recipe beside distillkit.pipelines.recipe, so
    every *.toml there must match a package-data pattern of distillkit.pipelines (else an installed copy lacks it)."""
    from fnmatch import fnmatch

    from distillkit.pipelines.recipe import RECIPES

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    shipped = sorted(p.name for p in RECIPES.glob("*.toml"))
    assert RECIPES == ROOT / "distillkit" / "pipelines" and {"demo.toml", "ci-smoke.toml"} <= set(shipped)
    missing = [n for n in shipped if not any(fnmatch(n, pat) for pat in data.get("distillkit.pipelines", ()))]
    assert not missing, f"add a pattern for {missing} to [tool.setuptools.package-data] \"distillkit.pipelines\""


def test_cli_start_up_imports_no_heavy_library():
    """`distillkit --help` builds every command's options from the config classes; none may pull in torch,
    transformers, pyarrow or numpy at import time (they cost ~0.5 s before the first line of help)."""
    import subprocess
    import sys

    code = ("import sys, distillkit.cli.main; "
            "print(','.join(m for m in ('torch', 'transformers', 'pyarrow', 'numpy', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at start-up: {out}"
