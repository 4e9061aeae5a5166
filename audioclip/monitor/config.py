"""The monitor's configuration: one validated model that ``monitor.toml`` and the CLI flags both fill.

``load_config(path)`` reads a TOML file, ``MonitorConfig.from_dict(d)`` validates a parsed one,
``MonitorConfig.single(...)`` builds the one-source configuration of today's flags. Every error is
a :class:`ConfigError` of one line naming the file and the key::

    monitor.toml: labels[2].threshold: must be between 0 and 1, got 1.5

Strings may hold ``${VAR}`` or ``${VAR:-default}``, expanded from the environment, so a file can be
committed without its secrets; ``repr`` and :meth:`MonitorConfig.redacted` never show passwords
or webhook secrets. Relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..stream.config import StreamConfig
from ..stream.scoring import DEFAULT_THRESHOLDS
from .config_parse import ConfigError, Reader, expand_env, redact, split_listen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "HttpConfig", "LabelConfig", "LabelParams", "MetricsConfig", "ModelConfig", "MonitorConfig",
           "MqttConfig", "SourceConfig", "StoreConfig", "StreamDefaults", "WebhookConfig", "load_config",
           "redact"]

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "rtp", "tcp")
MQTT_SCHEMES = ("mqtt", "mqtts")
SOURCE_OVERRIDES = ("window", "hop", "smooth", "min_dbfs", "threshold")
LABEL_OVERRIDES = ("threshold", "hysteresis", "min_windows")


def _shown(f: dataclasses.Field, value):
    """A field's value as logs and reprs may show it: secrets as ``***``, URLs without their password."""
    if f.metadata.get("secret") and value is not None:
        return "***"
    if f.metadata.get("url") and value is not None:
        return redact(value)
    return value


def _safe_repr(self) -> str:
    parts = []
    for f in dataclasses.fields(self):
        parts.append(f"{f.name}={_shown(f, getattr(self, f.name))!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


def _secret():
    return field(default=None, metadata={"secret": True})


def _url(default=None):
    return field(default=default, metadata={"url": True})


@dataclass(frozen=True)
class ModelConfig:
    """``checkpoint``: a release name or path; ``onnx``: an export folder (instead); ``threads``: None picks;
    ``runtime``: what runs ``onnx`` (``onnxruntime``, ``openvino``); ``precision``: ``fp32`` or ``bf16``
    (OpenVINO, or PyTorch through autocast; docs/export.md)."""

    checkpoint: str = "full"
    onnx: str | None = None
    threads: int | None = None
    runtime: str = "onnxruntime"
    precision: str = "fp32"


_STREAM = StreamConfig()  # the stream's own defaults: [defaults] and the command line start from them


@dataclass(frozen=True)
class StreamDefaults:
    """``[defaults]``: what every source and label uses unless it says otherwise; the stream's defaults
    (:class:`~audioclip.stream.config.StreamConfig`) but for ``min_dbfs``, which a service sets, and
    ``score``: a monitor scores each label on its own (``"label"``, docs/scores.md; ``"softmax"``: over the
    label set), and its default ``threshold`` is that score's."""

    window: float = _STREAM.window
    hop: float = _STREAM.hop  # 0.50884 s: overlapping windows share work
    smooth: int = _STREAM.smooth
    threshold: float = DEFAULT_THRESHOLDS["label"]
    hysteresis: float = _STREAM.hysteresis
    min_windows: int = _STREAM.min_windows
    min_dbfs: float | None = -90.0
    template: str = "{}"
    exact_windows: bool = _STREAM.exact_windows  # compute every window whole (else aligned hops share work)
    score: str = "label"


@dataclass(frozen=True)
class LabelConfig:
    """A label: its name, the prompts whose embeddings are averaged, and its event settings.

    ``threshold`` / ``hysteresis`` / ``min_windows``: None takes the source's or the defaults'.
    ``event=False``: scored, never an event. ``privacy``: windows it wins never reach a clip.
    """

    name: str
    prompts: tuple[str, ...]
    threshold: float | None = None
    hysteresis: float | None = None
    min_windows: int | None = None
    event: bool = True
    privacy: bool = False


@dataclass(frozen=True, repr=False)
class SourceConfig:
    """One input. ``kind`` is ``url``, ``device``, ``file`` or ``stdin``; the matching field holds it
    (``device=None``: the system's default input). ``realtime`` / ``loop`` apply to files.
    ``window`` ... ``threshold``: None takes ``[defaults]``."""

    name: str
    kind: str
    url: str | None = _url()
    device: str | int | None = None
    file: str | None = None
    realtime: bool = True
    loop: bool = False
    window: float | None = None
    hop: float | None = None
    smooth: int | None = None
    min_dbfs: float | None = None
    threshold: float | None = None
    stall_seconds: float = 10.0
    enabled: bool = True

    __repr__ = _safe_repr

    @property
    def live(self) -> bool:
        """Whether it is reopened when it fails or ends (a file is live only when looped)."""
        return self.kind in ("url", "device") or (self.kind == "file" and self.loop)


@dataclass(frozen=True)
class StoreConfig:
    """``db``: the SQLite file; ``clips``: the clips folder (None: no clips). ``keep_days`` /
    ``max_gb``: clip retention, None for no limit (``0`` in the file); ``keep_days`` deletes the moments
    too (``max_gb`` counts the clips only). ``embeddings``: keep each event's peak window's audio embedding
    in the database, for ``audioclip-search DB --text ...``; ``embed_every``: with ``embeddings``, also keep
    one window's embedding per source every so many seconds (the ``moments`` table; 0: none)."""

    db: str = "audioclip.sqlite"
    clips: str | None = None
    pre_roll: float = 2.0
    post_roll: float = 2.0
    max_clip_seconds: float = 60.0
    keep_days: float | None = 30.0
    max_gb: float | None = 5.0
    embeddings: bool = True
    embed_every: float = 5.0


@dataclass(frozen=True, repr=False)
class MqttConfig:
    url: str = _url()
    prefix: str = "audioclip"
    homeassistant: bool = False
    queue: int = 1000

    __repr__ = _safe_repr


@dataclass(frozen=True, repr=False)
class WebhookConfig:
    url: str = _url()
    secret: str | None = _secret()
    timeout: float = 5.0

    __repr__ = _safe_repr


class _Listening:
    """``host`` and ``port`` of a configuration's ``listen`` (``host:port``, ``[::1]:port`` for IPv6)."""

    listen: str

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True)
class MetricsConfig(_Listening):
    """``listen``: ``host:port`` of the Prometheus endpoint (``[::1]:9108`` for IPv6)."""

    listen: str = "127.0.0.1:9108"


@dataclass(frozen=True, repr=False)
class HttpConfig(_Listening):
    """``[http]``: the web page and HTTP API. ``listen``: ``host:port`` (loopback unless a ``token`` is set);
    ``token``: the bearer token writes and requests from beyond loopback need (``--http-token`` or
    ``AUDIOCLIP_HTTP_TOKEN`` when not in the file); ``public_url``: the base of the ``clip_url`` that MQTT and
    webhooks carry (default ``http://listen``); ``upload_max_mb``: the largest search upload; ``cors``: origins
    allowed to call the API from other pages (none by default)."""

    listen: str = "127.0.0.1:8080"
    token: str | None = _secret()
    public_url: str | None = None
    upload_max_mb: float = 20.0
    cors: tuple[str, ...] = ()

    __repr__ = _safe_repr

    @property
    def base_url(self) -> str:
        """Where clip links point: ``public_url`` without its trailing ``/``, else ``http://listen``."""
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


HTTP_TOKEN_ENV = "AUDIOCLIP_HTTP_TOKEN"
"""The environment variable a token may come from when neither ``[http] token`` nor ``--http-token`` gives one."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def with_http(config: MonitorConfig, listen: str | None = None, token: str | None = None, *,
              environ: Mapping[str, str] | None = None) -> MonitorConfig:
    """``config`` with the command line's ``--http`` / ``--http-token`` over ``[http]``, the token from
    ``AUDIOCLIP_HTTP_TOKEN`` when none is given, checked: a bind beyond loopback needs a token (ConfigError)."""
    http = config.http
    if listen is not None:
        try:
            split_listen(listen)
        except ValueError as e:
            raise ConfigError("--http", str(e), "command line") from None
        http = dataclasses.replace(http or HttpConfig(), listen=listen)
    if http is None:
        if token is not None:
            raise ConfigError("--http-token", "needs --http HOST:PORT or [http] listen", "command line")
        return config
    environ = os.environ if environ is None else environ
    token = token or http.token or environ.get(HTTP_TOKEN_ENV) or None
    http = dataclasses.replace(http, token=token)
    if not http.loopback and not token:
        key = "--http" if listen is not None else "http.listen"
        raise ConfigError(key, f"{http.listen} is reachable beyond this machine: set a token ([http] token, "
                               f"--http-token or {HTTP_TOKEN_ENV}) or listen on 127.0.0.1",
                          "command line" if listen is not None else config.origin)
    return dataclasses.replace(config, http=http)


@dataclass(frozen=True)
class LabelParams:
    """One source's per-label event settings, arrays in label order."""

    thresholds: np.ndarray
    hysteresis: np.ndarray
    min_windows: np.ndarray
    event: np.ndarray
    privacy: np.ndarray


@dataclass(frozen=True, repr=False)
class MonitorConfig:
    """The whole validated configuration. ``labels=()`` (flags only): the model's own labels."""

    sources: tuple[SourceConfig, ...]
    labels: tuple[LabelConfig, ...] = ()
    model: ModelConfig = ModelConfig()
    defaults: StreamDefaults = StreamDefaults()
    store: StoreConfig | None = None
    mqtt: MqttConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()
    metrics: MetricsConfig | None = None
    http: HttpConfig | None = None
    origin: str = "monitor.toml"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "monitor.toml", *,
                  environ: Mapping[str, str] | None = None, expand: bool = True) -> MonitorConfig:
        """Validate a parsed configuration; ``ConfigError`` names ``origin`` and the key.

        ``${VAR}`` in strings expand from ``environ`` (``os.environ`` by default) unless ``expand``
        is false (values the shell has expanded already).
        """
        from .config_parse import parse_config

        try:
            if expand:
                d = expand_env(d, os.environ if environ is None else environ)
            config = parse_config(cls, Reader(d), origin)
            config._check_streams()
        except ConfigError as e:
            raise e.within(origin) from None
        return config

    @classmethod
    def single(cls, **flags) -> MonitorConfig:
        """The one-source configuration of ``audioclip-stream``'s flags; see :func:`.config_parse.single`."""
        from .config_parse import single

        return single(cls, **flags)

    # --- what the service reads -----------------------------------------------------------

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def enabled_sources(self) -> list[SourceConfig]:
        return [s for s in self.sources if s.enabled]

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r}; sources: {', '.join(s.name for s in self.sources)}")

    def stream_config(self, source: SourceConfig | str, **extra) -> StreamConfig:
        """The source's effective ``StreamConfig``: its overrides over ``[defaults]``, events on.

        The scalar ``threshold`` is the source's; labels with their own use :meth:`label_params`.
        ``extra``: further StreamConfig fields (``top_k``, ``duration``) from the command line.
        """
        source = self.source(source) if isinstance(source, str) else source
        d = self.defaults

        def pick(name):
            value = getattr(source, name)
            return getattr(d, name) if value is None else value

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a hop longer than the window was warned about at load
            return StreamConfig(window=pick("window"), hop=pick("hop"), smooth=pick("smooth"), events=True,
                                threshold=pick("threshold"), hysteresis=d.hysteresis, min_windows=d.min_windows,
                                min_dbfs=pick("min_dbfs"), realtime=source.kind == "file" and source.realtime,
                                exact_windows=d.exact_windows, **extra)

    def label_params(self, source: SourceConfig | str) -> LabelParams:
        """Per-label thresholds, hysteresis, min_windows, event and privacy for ``source``."""
        source = self.source(source) if isinstance(source, str) else source
        base = self.stream_config(source)

        def column(name, dtype):
            return np.array([base_or(getattr(label, name), getattr(base, name)) for label in self.labels], dtype)

        return LabelParams(thresholds=column("threshold", np.float64), hysteresis=column("hysteresis", np.float64),
                           min_windows=column("min_windows", np.int64),
                           event=np.array([label.event for label in self.labels], bool),
                           privacy=np.array([label.privacy for label in self.labels], bool))

    def redacted(self) -> dict:
        """The configuration as plain data with passwords in URLs and secrets replaced by ``***``."""

        def plain(obj):
            if dataclasses.is_dataclass(obj):
                out = {}
                for f in dataclasses.fields(obj):
                    out[f.name] = plain(_shown(f, getattr(obj, f.name)))
                return out
            if isinstance(obj, tuple):
                return [plain(x) for x in obj]
            return obj

        return plain(self)

    def __repr__(self) -> str:
        return f"MonitorConfig({self.redacted()!r})"

    def _check_streams(self) -> None:
        """Every source's and label's effective settings make a valid ``StreamConfig``; an error names the key
        the user set, and the keys of the other values it was checked against (``sources[1].threshold``)."""
        for i, source in enumerate(self.sources):
            keys = {f.name: f"sources[{i}].{f.name}" if getattr(source, f.name, None) is not None
                    else f"defaults.{f.name}" for f in dataclasses.fields(StreamConfig)}
            try:
                self.stream_config(source)
            except ValueError as e:
                raise _key_error(e, keys) from None
            base = self.stream_config(source)
            for j, label in enumerate(self.labels):
                values = {k: base_or(getattr(label, k), getattr(base, k)) for k in LABEL_OVERRIDES}
                own = {k: f"labels[{j}].{k}" for k in LABEL_OVERRIDES if getattr(label, k) is not None}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # warned once per source below
                        dataclasses.replace(base, **values)
                except ValueError as e:
                    raise _key_error(e, {**keys, **own}) from None
            if base.hop_samples > base.window_samples:
                warnings.warn(f"{self.origin}: source {source.name!r}: hop {base.hop:g} s is longer than its window "
                              f"{base.window:g} s: {base.hop - base.window:g} s of every {base.hop:g} s is never "
                              "classified", stacklevel=4)


def _key_error(e: ValueError, keys: Mapping[str, str]) -> ConfigError:
    """A StreamConfig error (a ``ParameterError``: ``"{hysteresis}: must be ... below {threshold} 0.3"``) as a
    ConfigError naming the key that set the field, and each other value it names by its key where that is in
    another table (``labels[0].hysteresis: ... below sources[1].threshold 0.25``)."""
    name = getattr(e, "parameter", None)
    if name is None or not hasattr(e, "with_names"):
        prefix, _, rest = str(e).partition(": ")
        return ConfigError(keys.get(prefix, prefix), rest)
    key = keys.get(name, name)
    table = key.rpartition(".")[0]
    shown = {field: field if other.rpartition(".")[0] == table else other for field, other in keys.items()}
    prefix, _, rest = e.with_names(shown).partition(": ")
    return ConfigError(key, rest if prefix == shown.get(name, name) else e.with_names(shown))


def base_or(value, base):
    return base if value is None else value


def load_config(path: str | os.PathLike, *, environ: Mapping[str, str] | None = None) -> MonitorConfig:
    """Read and validate a ``monitor.toml``; errors are one-line ``ConfigError``s naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "no such file; pass the path of a monitor.toml").within(str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read it ({e})").within(str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"not valid TOML: {e}").within(str(path)) from None
    return MonitorConfig.from_dict(data, origin=str(path), environ=environ)


