"""The project's metadata builds without deprecation warnings; scripts/setup.sh installs what it uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_builds_with_an_spdx_license_and_no_deprecation_warning(tmp_path):
    code = f"import setuptools.build_meta as b; print(b.prepare_metadata_for_build_wheel({str(tmp_path)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deprecated" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    metadata = (tmp_path / proc.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata.splitlines()


def test_setup_script_installs_python3_venv_before_making_the_venv():
    """A fresh Debian/Ubuntu has python3 without its venv module: ``python3 -m venv`` fails there."""
    script = (ROOT / "scripts" / "setup.sh").read_text()
    packages = re.search(r'^packages="([^"]*)"', script, re.M)
    assert packages and "python3-venv" in packages[1].split()
    assert script.index("apt-get install") < re.search(r"^python3 -m venv", script, re.M).start()


def _package_imports() -> dict[str, set[str]]:
    """For each subpackage of ``audioclip``, the other subpackages its library modules import (lazy imports
    included). The commands (``cli.py``) sit on top of every part: ``audioclip-stream --config`` runs the monitor."""
    import ast

    root = Path(__file__).resolve().parents[1] / "audioclip"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if len(parts) < 2 or parts[-1] == "cli.py":
            continue  # audioclip/*.py: the modules every part shares
        package = ["audioclip", *parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                full = [*package[:len(package) - (node.level - 1)], *(node.module or "").split(".")]
            else:
                full = (node.module or "").split(".")
            if full[0] == "audioclip" and len(full) > 1 and full[1] and (root / full[1]).is_dir() \
                    and full[1] != parts[0]:
                graph.setdefault(parts[0], set()).add(full[1])
    return graph


def test_no_import_cycle_between_the_parts_and_model_imports_none_of_them():
    graph = _package_imports()
    assert not graph.get("model"), graph.get("model")
    assert "training" not in {p for deps in graph.values() for p in deps}
    for package, deps in graph.items():
        for dep in deps:
            assert package not in graph.get(dep, set()), f"{package} imports {dep} and {dep} imports {package}"
    assert "archive" not in graph.get("monitor", set())  # the archive reads monitor databases; never the reverse
