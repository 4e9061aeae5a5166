"""What the three command-line tools share: --version, flags shown as flags, plain log lines off a terminal."""

from __future__ import annotations

import signal
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip.export.cli import app as export_app
from audioclip.model.constants import SAMPLE_RATE
from audioclip.stream.cli import app as stream_app
from audioclip.training.cli import app as train_app

runner = CliRunner()
APPS = {"audioclip-stream": stream_app, "audioclip-export": export_app, "audioclip-train": train_app}


@pytest.mark.parametrize("name", APPS)
def test_version(name):
    result = runner.invoke(APPS[name], ["--version"])
    assert result.exit_code == 0 and result.output == f"{name} {version('audioclip-stream')}\n"


@pytest.mark.parametrize("name, command", [("audioclip-stream", []), ("audioclip-export", []),
                                           ("audioclip-export", ["onnx"]), ("audioclip-train", []),
                                           ("audioclip-train", ["finetune"]), ("audioclip-train", ["evaluate"])])
def test_help_shows_flags_without_a_bool_value(name, command):
    """typer's help would write ``--list-devices <bool>``, and a user then types ``--list-devices true``."""
    result = runner.invoke(APPS[name], [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--help" in result.output
    assert "<bool>" not in result.output and "bool" not in result.output.lower().replace("boolean", "")


@pytest.mark.slow
def test_log_lines_to_a_pipe_are_plain_unwrapped_and_unpadded(tmp_path, tiny_checkpoint):
    folder = tmp_path / ("a-folder-with-a-long-name-" * 3)
    folder.mkdir()
    wav = folder / "one-second-of-a-quiet-tone.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(SAMPLE_RATE) / 10).astype(np.float32), SAMPLE_RATE)
    proc = subprocess.run([sys.executable, "-m", "audioclip.stream.cli", "--checkpoint", str(tiny_checkpoint),
                           "--labels", "a,b", "--input", str(wav), "--window", "1", "--hop", "0.5", "--format", "jsonl",
                           "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line == line.rstrip() for line in lines), lines
    streaming = [line for line in lines if line.startswith("INFO streaming ")]
    assert streaming == [f"INFO streaming {wav}: window 1.000 s, hop 0.500 s, every window"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_the_monitor_exits_130_on_ctrl_c_and_0_on_sigterm(signum, code, tmp_path, tiny_checkpoint, clips_dir):
    """Ctrl-C: the shell's 130, as in the one-stream mode, export and train; SIGTERM: a service's clean stop."""
    proc = subprocess.Popen([sys.executable, "-m", "audioclip.stream.cli", "--checkpoint", str(tiny_checkpoint),
                             "--labels", "a,b", "--input", str(clips_dir / "thunder_3-144891-B-19.wav"), "--realtime",
                             "--window", "1", "--db", str(tmp_path / "m.sqlite"), "--format", "jsonl",
                             "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()  # the first window: the monitor is running
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "t_start" in first, err
    assert proc.returncode == code, err
    assert "Traceback" not in err
