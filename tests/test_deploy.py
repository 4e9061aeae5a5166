"""deploy/audioclip-stream.service: a systemd unit that systemd itself accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import require

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "audioclip-stream.service"
INSTALLED = "/opt/audioclip-stream/.venv/bin/audioclip-stream"


def settings(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return sections


def test_the_unit_runs_the_configured_service_as_a_sandboxed_user():
    service = settings(UNIT.read_text())["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["ExecStart"].split() == [INSTALLED, "--config", "/etc/audioclip/monitor.toml", "--format", "jsonl"]
    assert one["StandardOutput"] == "null"  # not a line per window in the journal
    assert one["Restart"] == "on-failure" and one["User"] == "audioclip" and one["User"] != "root"
    assert one["EnvironmentFile"] == "-/etc/audioclip/env"  # secrets, optional
    assert one["SupplementaryGroups"] == "audio"
    assert one["StateDirectory"] == "audioclip" and one["ReadWritePaths"] == "/var/lib/audioclip"
    assert one["WorkingDirectory"] == "/var/lib/audioclip"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes")):
        assert one[key] == value, key
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads labels and thresholds


def verify(tmp_path, text: str) -> str:
    """systemd-analyze verify's complaints about a copy of the unit (its ExecStart pointed at a real file)."""
    require(shutil.which("systemd-analyze"), "systemd-analyze is not installed (Debian package systemd)")
    executable = Path(sys.executable).with_name("audioclip-stream")
    require(executable.exists(), f"{executable} is not installed (pip install -e .)")
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED, str(executable)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    return "\n".join(line for line in output.splitlines() if UNIT.name in line or "audioclip" in line)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert verify(tmp_path, UNIT.read_text()) == ""


def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path):
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes")
    assert "ProtectHomes" in verify(tmp_path, broken)
