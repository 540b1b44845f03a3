"""The installed layout: cli/ and pipelines/ install under the distillkit namespace, and no package is left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_mapped():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "distillkit").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert tool["package-dir"] == {"distillkit.cli": "cli", "distillkit.pipelines": "pipelines"}
    assert {"distillkit.cli", "distillkit.pipelines"} <= listed and not {"cli", "pipelines"} & listed
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["distillkit"] == "distillkit.cli.main:main"


def test_namespace_imports_resolve_to_the_repository_folders():
    import distillkit.cli.main
    import distillkit.pipelines.recipe

    assert Path(distillkit.cli.main.__file__).parent == ROOT / "cli"
    assert Path(distillkit.pipelines.recipe.__file__).parent == ROOT / "pipelines"


def test_cli_start_up_imports_no_heavy_library():
    """`distillkit --help` builds every command's options from the config classes; none may pull in torch,
    transformers, pyarrow or numpy at import time (they cost ~0.5 s before the first line of help)."""
    import subprocess
    import sys

    code = ("import sys, distillkit.cli.main; "
            "print(','.join(m for m in ('torch', 'transformers', 'pyarrow', 'numpy', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at start-up: {out}"
