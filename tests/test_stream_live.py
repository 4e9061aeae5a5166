"""The live display in a real terminal (a pseudo-terminal read by a terminal emulator, pyte): it shows that it is
listening from the first block, and Ctrl-C leaves the final frame alone on the screen, no stale frame above it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from helpers import require_module

pyte = require_module("pyte", "the terminal tests need pyte (the dev extra)")

COLUMNS, LINES = 100, 30


class Terminal:
    """``audioclip-stream`` on a pseudo-terminal of its own (its controlling terminal: ^C is a real Ctrl-C)."""

    def __init__(self, args: list[str]):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(LINES)}
        self.proc = subprocess.Popen([sys.executable, "-m", "audioclip.stream.cli", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.stream.feed(os.read(self.master, 65536))
            except OSError:  # the child closed the terminal
                time.sleep(timeout)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, condition, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not condition(self.text()):
            assert time.monotonic() < deadline and self.proc.poll() is None, f"no {what} on the screen:\n{self.text()}"
            self.read(0.05)

    def close(self) -> int:
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.05)
        for _ in range(20):  # what is left in the terminal after the exit
            self.read(0.01)
        os.close(self.master)
        return self.proc.wait(timeout=10)


@pytest.mark.slow
def test_listening_from_the_first_block_and_ctrl_c_leaves_one_clean_final_frame(tiny_checkpoint, clips_dir):
    term = Terminal(["--checkpoint", str(tiny_checkpoint), "--labels", "cat,dog,siren", "--threads", "1",
                     "--input", str(clips_dir / "thunder_3-144891-B-19.wav"), "--realtime", "--window", "2"])
    try:
        term.wait_for(lambda t: "listening: t" in t and "first result at t = 2.0 s" in t and "dBFS" in t,
                      "listening view with an input level")
        assert "RTF" not in term.text()  # shown before the first window's result
        term.wait_for(lambda t: "RTF" in t and "windows 1" in t, "first result")
        os.write(term.master, b"\x03")  # Ctrl-C, as typed
        code = term.close()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    screen = term.text()
    assert code == 130, screen
    assert screen.count("audioclip-stream  ") == 1, screen  # the final frame only
    assert len(re.findall(r"\d\.\d%$", screen, re.M)) == 3 and "listening" not in screen  # one bar a label
    assert "latency mean" in screen and "Traceback" not in screen
    lines = screen.splitlines()  # the log line said while the display was up: whole, on its own line, above it
    said = [i for i, line in enumerate(lines) if re.match(r"INFO +overlapping windows share their front end", line)]
    assert len(said) == 1 and said[0] < lines.index(next(x for x in lines if "audioclip-stream  " in x)), screen
    assert not any(re.search(r"\S(INFO|WARNING) ", line) for line in lines), screen  # nothing glued to a frame


@pytest.mark.slow
def test_monitor_live_table_keeps_each_log_line_whole_on_its_own_line_above_it(tiny_checkpoint, clips_dir, tmp_path):
    radio = tmp_path / "radio.wav"  # a looped file: the monitor, and its source is called radio
    radio.write_bytes((clips_dir / "thunder_3-144891-B-19.wav").read_bytes())
    term = Terminal(["--checkpoint", str(tiny_checkpoint), "--labels", "cat,dog,siren", "--threads", "1",
                     "--input", str(radio), "--loop", "--realtime", "--window", "2", "--format", "live"])
    try:
        term.wait_for(lambda t: re.search(r"^radio +up ", t, re.M), "the table's row for radio")
        os.kill(term.proc.pid, signal.SIGHUP)  # a warning while the table is up: nothing to reload without --config
        term.wait_for(lambda t: "nothing to reload" in t, "the SIGHUP warning")
        for _ in range(10):  # the table redraws a few times under it
            term.read(0.1)
        os.write(term.master, b"\x03")
        code = term.close()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    screen = term.text()
    lines = screen.splitlines()
    assert code == 130, screen
    assert any(re.fullmatch(r"INFO +radio: up \(44100 Hz, 1 ch\)", line) for line in lines), screen
    assert any(re.fullmatch(r"WARNING +SIGHUP: nothing to reload \(no --config file\)", line) for line in lines), screen
    header = [i for i, line in enumerate(lines) if re.match(r"^ *source +state +hears", line)]
    warning = next(i for i, line in enumerate(lines) if "nothing to reload" in line)
    assert len(header) == 1 and warning < header[0], screen  # one table, below every log line
    assert not any(re.search(r"\S(INFO|WARNING) ", line) for line in lines), screen  # nothing glued to a row
