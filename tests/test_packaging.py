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
