"""Real local servers for the tests, each a process on 127.0.0.1 that a test can stop, kill and restart.

    with RtspServer(wav, free_port()) as rtsp:     # rtsp.url == "rtsp://127.0.0.1:PORT/live"
        rtsp.kill(); rtsp.start()                  # same port, a new process

- :class:`RtspServer`: ``tests/rtsp_server.py`` (GStreamer, run by the system ``/usr/bin/python3``),
  a WAV file as 48 kHz stereo L16, each client from the start of the file.
- :class:`HttpStream`: ``ffmpeg -re -stream_loop -1 -i WAV -f mp3 -listen 1 http://127.0.0.1:PORT/``,
  an endless MP3 stream for ONE client; the process exits when that client goes (``start()`` again).
- :class:`Mosquitto`: ``mosquitto`` on the port, anonymous clients allowed.

And their peers in the test process: :class:`Subscriber` (an MQTT client with a persistent QoS 1
session) and :class:`Receiver` (an HTTP server on 127.0.0.1 that records webhook POSTs).

``start()`` returns once the port is listening (read from ``/proc/net/tcp``, so that probing takes
no connection: ffmpeg would serve its only client to the probe). Every server still running when
the interpreter exits is killed, so that a failed test leaves no process behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")
_RUNNING: set[Server] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (IPv4 or IPv6), without connecting to it."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def long_wav(clips: list[Path], path: Path, seconds: float) -> Path:
    """``clips`` (mono or stereo, one rate) repeated one after another into a WAV of at least ``seconds``."""
    audio = [sf.read(str(clip), dtype="float32", always_2d=True) for clip in clips]
    rate = audio[0][1]
    if any(r != rate for _, r in audio):
        raise ValueError(f"clips must share one sample rate: {[(c.name, r) for c, (_, r) in zip(clips, audio)]}")
    channels = max(a.shape[1] for a, _ in audio)
    parts = [np.broadcast_to(a, (len(a), channels)) for a, _ in audio]
    total = sum(len(p) for p in parts)
    repeat = max(1, int(np.ceil(seconds * rate / total)))
    sf.write(str(path), np.concatenate(parts * repeat), rate, subtype="PCM_16")
    return path


class Server:
    """A server process: ``start()``, ``stop()`` (SIGTERM, then SIGKILL), ``kill()`` (SIGKILL), ``restart()``."""

    name = "server"

    def __init__(self, port: int | None = None, *, start_timeout: float = 10.0):
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))  # its log and configuration
        self.log = self.folder / "server.log"
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Server:
        if self.running:
            return self
        deadline = time.monotonic() + self.start_timeout
        while listening(self.port):  # the previous process's socket is going away
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: port {self.port} is taken")
            time.sleep(0.05)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.add(self)
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start listening on 127.0.0.1:{self.port}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def _signal(self, sig: int, wait: float) -> bool:
        if self.process is None:
            return True
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it; the port is free when this returns."""
        self._signal(signal.SIGKILL, 10)
        self.process = None
        _RUNNING.discard(self)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if not self._signal(signal.SIGTERM, 5):
            self._signal(signal.SIGKILL, 10)
        self.process = None
        _RUNNING.discard(self)

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RtspServer(Server):
    name = "rtsp-server"

    def __init__(self, wav_path: str | Path, port: int | None = None, *, mount: str = "/live"):
        super().__init__(port)
        self.wav_path, self.mount = Path(wav_path), mount
        self.url = f"rtsp://127.0.0.1:{self.port}{mount}"

    def command(self) -> list[str]:
        return [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port), "--wav", str(self.wav_path),
                "--mount", self.mount]


class HttpStream(Server):
    name = "http-stream"

    def __init__(self, wav_path: str | Path, port: int | None = None):
        super().__init__(port)
        self.wav_path = Path(wav_path)
        self.url = f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
                "-stream_loop", "-1", "-i", str(self.wav_path), "-f", "mp3", "-listen", "1", self.url]


class Mosquitto(Server):
    """A broker; with ``persistent=True`` it keeps sessions and queued QoS 1 messages across a stop."""

    name = "mosquitto"

    def __init__(self, port: int | None = None, *, persistent: bool = False):
        super().__init__(port)
        self.host = "127.0.0.1"
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = self.folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"persistence {str(persistent).lower()}"]
        if persistent:  # started as root, mosquitto drops to its own user: it must write the folder
            self.folder.chmod(0o777)
            lines.append(f"persistence_location {self.folder}/")
        self.config.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.config)]


@atexit.register
def _kill_all() -> None:
    for server in list(_RUNNING):
        server.kill()


class Subscriber:
    """A paho client with a persistent QoS 1 session, recording (topic, payload, retain)."""

    def __init__(self, port: int, topics: list[str], client_id: str):
        self.messages: list[tuple[str, str, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.2)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def payloads(self, topic: str) -> list[str]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """An HTTP server on 127.0.0.1 answering POSTs with the statuses given, then 200."""

    def __init__(self, statuses=()):
        self.statuses, self.requests = list(statuses), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
