"""Reading ``monitor.toml`` into :class:`~audioclip.monitor.config.MonitorConfig`: key-named checks,
``${VAR}`` expansion, URL redaction, and the one-source configuration of the CLI flags."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A configuration problem, one line: ``ORIGIN: KEY: REASON``."""

    def __init__(self, key: str, reason: str, origin: str | None = None):
        self.key, self.reason, self.origin = key, reason, origin
        super().__init__(": ".join(part for part in (origin, key, reason) if part))

    def within(self, origin: str) -> ConfigError:
        return ConfigError(self.key, self.reason, origin)


_USERINFO = re.compile(r"(?:(?<=://)|(?<![^\s'\"(]))[^/@\s'\"]*@")  # after scheme://, or a URL without one
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|token|access_token|secret|api_?key|key|auth|sig"
                           r"|signature)=)[^&;#\s'\"]*")


def redact(text: str) -> str:
    """``text`` (a URL, or a message naming URLs) with every URL's ``user:password@`` part replaced by
    ``***@`` and the values of query parameters such as ``password=`` or ``token=`` by ``***``.

    The one redaction of the monitor: configuration reprs, errors, log lines and sink names go through it.
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub("***@", text))


def split_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``[::1]:9108`` for IPv6, port 0-65535, 0: any free port) -> ``(host, port)``.

    The one check of ``[metrics] listen`` / ``--metrics``; a :class:`ValueError` says what was expected.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port 0-65535 (e.g. 127.0.0.1:9108 or [::1]:9108), got {listen!r}")
    return host.strip("[]"), int(port)


def expand_env(value, environ: Mapping[str, str], key: str = ""):
    """``value`` with ``${VAR}`` / ``${VAR:-default}`` in every string replaced from ``environ``."""
    if isinstance(value, str):
        def replace(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable {name} is not set; set it, or write ${{{name}:-default}}")

        return _VAR.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: expand_env(v, environ, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


class Reader:
    """Typed access to one table of the configuration; every error names the key's full path."""

    def __init__(self, table: Mapping[str, Any], path: str = ""):
        if not isinstance(table, Mapping):
            raise ConfigError(path, f"must be a table, got {_show(table)}")
        self.table, self.path, self.used = table, path, set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.key(name), reason)

    def has(self, name: str) -> bool:
        self.used.add(name)
        return name in self.table

    def raw(self, name: str, default=None):
        self.used.add(name)
        return self.table.get(name, default)

    def table_of(self, name: str) -> Reader | None:
        return Reader(self.raw(name), self.key(name)) if self.has(name) else None

    def string(self, name: str, default=None, *, empty: bool = False) -> str | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_show(value)}")
        if not empty and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_show(value)}")
        return value

    def number(self, name: str, default=None, *, low: float | None = None, high: float | None = None,
               open_low: bool = False) -> float | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(name, f"must be a number, got {_show(value)}")
        if low is not None and (value <= low if open_low else value < low):
            raise self.error(name, f"must be {'above' if open_low else 'at least'} {low:g}, got {value:g}")
        if high is not None and value > high:
            raise self.error(name, f"must be at most {high:g}, got {value:g}")
        return float(value)

    def whole(self, name: str, default=None, *, low: int = 1) -> int | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be a whole number, got {_show(value)}")
        if value < low:
            raise self.error(name, f"must be at least {low}, got {value}")
        return value

    def url(self, name: str, schemes: tuple[str, ...], default=None, *, host: bool = True) -> str | None:
        value = self.string(name, default)
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in schemes:
            got = f"scheme {scheme!r}" if scheme else f"{redact(value)!r} (no scheme://)"
            raise self.error(name, f"unsupported {got}; use one of {', '.join(s + '://' for s in schemes)}")
        parts = urlsplit(value)
        if host and not parts.hostname:
            raise self.error(name, f"{redact(value)!r} has no host")
        try:
            _ = parts.port  # urlsplit checks the port lazily
        except ValueError:
            raise self.error(name, f"the port of {parts.hostname} is not a number 0-65535") from None
        return value

    def done(self) -> None:
        """Unknown keys are errors: a typo must not be silently ignored."""
        for name in self.table:
            if name not in self.used:
                close = difflib.get_close_matches(name, sorted(self.used), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(self.used))}"
                raise ConfigError(self.key(name), f"unknown key{hint}")


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _list(r: Reader, name: str) -> list[Reader | str]:
    value = r.raw(name, [])
    if isinstance(value, (str, Mapping)) or not isinstance(value, list):
        raise r.error(name, f"must be a list ([[{name}]] tables), got {_show(value)}")
    return value


def _name(r: Reader, what: str) -> str:
    name = r.string("name")
    if name is None:
        raise r.error("name", f"missing; every {what} needs a name")
    return name


def parse_config(cls, root: Reader, origin: str):
    from .config import (
        MQTT_SCHEMES,
        URL_SCHEMES,
        HttpConfig,
        MetricsConfig,
        ModelConfig,
        MqttConfig,
        StoreConfig,
        StreamDefaults,
        WebhookConfig,
    )

    model = ModelConfig()
    if (r := root.table_of("model")) is not None:
        onnx = r.string("onnx")
        if onnx is not None and r.has("checkpoint"):
            raise r.error("onnx", "give checkpoint or onnx, not both")
        runtime, precision = r.string("runtime", "onnxruntime"), r.string("precision", "fp32")
        if runtime not in ("onnxruntime", "openvino"):
            raise r.error("runtime", f"must be 'onnxruntime' or 'openvino', got {runtime!r}")
        if precision not in ("fp32", "bf16"):
            raise r.error("precision", f"must be 'fp32' or 'bf16', got {precision!r}")
        if runtime != "onnxruntime" and onnx is None:
            raise r.error("runtime", f"{runtime} runs an export: set onnx = \"DIR\" (written by audioclip-export onnx)")
        if onnx is not None and runtime == "onnxruntime" and precision != "fp32":
            raise r.error("precision", f"{precision}: ONNX Runtime runs the graphs at their exported precision; set "
                                       f"runtime = \"openvino\"")
        model = ModelConfig(checkpoint=r.string("checkpoint", "full"), onnx=onnx, threads=r.whole("threads"),
                            runtime=runtime, precision=precision)
        r.done()
    defaults = StreamDefaults()
    if (r := root.table_of("defaults")) is not None:
        from ..model.labels import check_template
        from ..stream.scoring import SCORES, default_threshold

        base = StreamDefaults()
        score = r.string("score", base.score)
        if score not in SCORES:
            raise r.error("score", f"must be one of {', '.join(map(repr, SCORES))}, got {score!r}")
        values = {name: r.number(name, getattr(base, name)) for name in ("window", "hop", "hysteresis")}
        values["threshold"] = r.number("threshold", default_threshold(score))
        values["score"] = score
        values.update({name: r.whole(name, getattr(base, name)) for name in ("smooth", "min_windows")})
        values["min_dbfs"] = r.number("min_dbfs", base.min_dbfs, high=0.0)
        values["exact_windows"] = r.boolean("exact_windows", base.exact_windows)
        template = r.string("template", base.template, empty=True)
        try:
            check_template(template)
        except ValueError as e:
            raise r.error("template", str(e)) from None
        defaults = StreamDefaults(template=template, **values)
        r.done()
    labels = tuple(_label(item, i) for i, item in enumerate(_list(root, "labels")))
    _check_prompt_lengths(labels, defaults.template)
    _unique([label.name for label in labels], "labels")
    if not labels:
        raise ConfigError("labels", 'none given; add [[labels]] tables or labels = ["siren", "dog bark"]')
    sources = tuple(_source(item, i, URL_SCHEMES) for i, item in enumerate(_list(root, "sources")))
    if not sources:
        raise ConfigError("sources", 'none given; add a [[sources]] table, e.g. name = "mic" and device = "default"')
    _unique([s.name for s in sources], "sources")
    store = mqtt = metrics = None
    if (r := root.table_of("store")) is not None:
        base = StoreConfig()
        store = StoreConfig(db=r.string("db", base.db), clips=r.string("clips"),
                            pre_roll=r.number("pre_roll", base.pre_roll, low=0.0),
                            post_roll=r.number("post_roll", base.post_roll, low=0.0),
                            max_clip_seconds=r.number("max_clip_seconds", base.max_clip_seconds, low=0.0,
                                                      open_low=True),
                            keep_days=r.number("keep_days", base.keep_days, low=0.0) or None,
                            max_gb=r.number("max_gb", base.max_gb, low=0.0) or None,
                            embeddings=r.boolean("embeddings", base.embeddings),
                            embed_every=r.number("embed_every", base.embed_every, low=0.0))
        r.done()
    if (r := root.table_of("mqtt")) is not None:
        url = r.url("url", MQTT_SCHEMES)
        if url is None:
            raise r.error("url", 'missing; e.g. url = "mqtt://broker.local:1883"')
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query:
            raise r.error("url", f"{parts.hostname} takes no path or query; set the topic prefix with mqtt.prefix")
        prefix = r.string("prefix", "audioclip")
        if any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise r.error("prefix", f"{prefix!r} is not a valid MQTT topic prefix "
                                    "(no + or #, no leading or trailing /)")
        mqtt = MqttConfig(url=url, prefix=prefix, homeassistant=r.boolean("homeassistant", False),
                          queue=r.whole("queue", 1000))
        r.done()
    webhooks = []
    for i, item in enumerate(_list(root, "webhooks")):
        r = Reader(item, f"webhooks[{i}]")
        url = r.url("url", ("http", "https"))
        if url is None:
            raise r.error("url", 'missing; e.g. url = "https://example.org/hook"')
        webhooks.append(WebhookConfig(url=url, secret=r.string("secret"),
                                      timeout=r.number("timeout", 5.0, low=0.0, open_low=True)))
        r.done()
    if (r := root.table_of("metrics")) is not None:
        metrics = MetricsConfig(listen=_listen(r))
        r.done()
    http = None
    if (r := root.table_of("http")) is not None:
        base = HttpConfig()
        cors = r.raw("cors", [])
        if isinstance(cors, str) or not isinstance(cors, list) or not all(isinstance(c, str) and c for c in cors):
            raise r.error("cors", f'must be a list of origins, e.g. ["http://nas.local:8080"], got {_show(cors)}')
        http = HttpConfig(listen=_listen(r, base.listen), token=r.string("token"),
                          public_url=r.url("public_url", ("http", "https")),
                          upload_max_mb=r.number("upload_max_mb", base.upload_max_mb, low=0.0, open_low=True),
                          cors=tuple(cors))
        r.done()
    root.done()
    return cls(sources=sources, labels=labels, model=model, defaults=defaults, store=store, mqtt=mqtt,
               webhooks=tuple(webhooks), metrics=metrics, http=http, origin=origin)


def _label(item, i: int):
    from .config import LabelConfig

    if isinstance(item, str):
        item = {"name": item}
    r = Reader(item, f"labels[{i}]")
    name = _name(r, "label")
    if any(c in name for c in "/+#") or any(ord(c) < 32 for c in name):
        raise r.error("name", f"{name!r} has a character that cannot go into an MQTT topic (/ + # or a control "
                              "character); put such text in prompts")
    prompts = r.raw("prompts", [name])
    if isinstance(prompts, str) or not isinstance(prompts, list) or not prompts:
        raise r.error("prompts", f"must be a non-empty list of strings, got {_show(prompts)}")
    for j, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{r.key('prompts')}[{j}]", f"must be a non-empty string, got {_show(prompt)}")
    label = LabelConfig(name=name, prompts=tuple(prompts), threshold=r.number("threshold"),
                        hysteresis=r.number("hysteresis"), min_windows=r.whole("min_windows"),
                        event=r.boolean("event", True), privacy=r.boolean("privacy", False))
    r.done()
    return label


def _check_prompt_lengths(labels, template: str) -> None:
    """Every prompt, in the template, fits the text encoder's context (77 tokens with start and end)."""
    from ..model.constants import CONTEXT_LENGTH

    for i, label in enumerate(labels):
        for j, prompt in enumerate(label.prompts):
            text = template.format(prompt)
            if len(text.encode("utf-8")) + 2 <= CONTEXT_LENGTH:  # a token is at least a byte: it fits
                continue
            from ..model.tokenizer import get_tokenizer

            tokens = len(get_tokenizer().encode(text)) + 2
            if tokens > CONTEXT_LENGTH:
                raise ConfigError(f"labels[{i}].prompts[{j}]", f"is {tokens} tokens with the template, longer than "
                                                                f"the text encoder's {CONTEXT_LENGTH}; shorten it")


def _source(item, i: int, schemes):
    from .config import SourceConfig

    r = Reader(item, f"sources[{i}]")
    name = _name(r, "source")
    if not _NAME.match(name):
        raise r.error("name", f"{name!r}: use letters, digits, '.', '_' and '-' "
                              "(it names clip folders and MQTT topics)")
    given = [kind for kind in ("url", "device", "file", "stdin") if r.has(kind)]
    if len(given) != 1:
        got = f"got {', '.join(given)}" if given else "got none"
        raise ConfigError(r.path, f"needs exactly one of url, device, file or stdin = true; {got}")
    kind = given[0]
    url = r.url("url", schemes, host=False) if kind == "url" else None
    device = r.raw("device") if kind == "device" else None
    if kind == "device" and (isinstance(device, bool) or not isinstance(device, (str, int)) or device == ""):
        raise r.error("device", f'must be a device name or index (or "default"), got {_show(device)}')
    if device == "default":
        device = None  # the system's default input
    file = r.string("file") if kind == "file" else None
    if kind == "stdin" and r.raw("stdin") is not True:
        raise r.error("stdin", f"must be true, got {_show(r.raw('stdin'))}")
    realtime = loop = None
    if kind == "file":
        realtime, loop = r.boolean("realtime", True), r.boolean("loop", False)
    for flag in ("realtime", "loop"):
        if kind != "file" and r.has(flag):
            raise r.error(flag, f"applies to file sources only, not {kind}")
    source = SourceConfig(name=name, kind=kind, url=url, device=device, file=file,
                          realtime=True if realtime is None else realtime, loop=bool(loop),
                          window=r.number("window"), hop=r.number("hop"), smooth=r.whole("smooth"),
                          min_dbfs=r.number("min_dbfs", high=0.0), threshold=r.number("threshold"),
                          stall_seconds=r.number("stall_seconds", 10.0, low=0.0, open_low=True),
                          enabled=r.boolean("enabled", True))
    r.done()
    return source


def _unique(names: list[str], section: str) -> None:
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{section}[{i}].name", f"{name!r} is given twice; names must be unique")
        seen.add(name)


def _listen(r: Reader, default: str = "127.0.0.1:9108") -> str:
    listen = r.string("listen", default)
    try:
        split_listen(listen)
    except ValueError as e:
        raise r.error("listen", str(e)) from None
    return listen


def single(cls, *, input: str | None = None, device: str | int | None = None, labels=None,
           template: str | None = None, checkpoint: str = "full", onnx: str | None = None,
           threads: int | None = None, runtime: str | None = None, precision: str | None = None,
           window: float | None = None, hop: float | None = None,
           smooth: int | None = None, threshold: float | None = None, hysteresis: float | None = None,
           min_windows: int | None = None, score: str | None = None,
           min_dbfs: float | None = None, realtime: bool = False, loop: bool = False, name: str | None = None,
           db: str | None = None, clips: str | None = None, mqtt: str | None = None, metrics: str | None = None):
    """The one-source configuration of ``audioclip-stream``'s flags, validated like a file.

    ``input``: a file, ``-`` for stdin, or a URL; else ``device`` (None: the default microphone).
    ``labels=None``: the model's own labels (a fine-tuned checkpoint or an ONNX export).
    ``clips`` needs ``db`` (a clip belongs to an event row). Errors name the flag. ``window`` ...
    ``min_windows``: None takes :class:`~audioclip.monitor.config.StreamDefaults`' (the stream's) default.
    """

    if input is not None and device is not None:
        raise ConfigError("--device", "selects a microphone; it cannot be combined with --input", "command line")
    d: dict = {"window": window, "hop": hop, "smooth": smooth, "threshold": threshold, "hysteresis": hysteresis,
               "min_windows": min_windows, "min_dbfs": min_dbfs, "template": "{}" if template is None else template,
               "score": score}
    source: dict = {}
    if input is None:
        source["device"], default_name = "default" if device is None else device, "microphone"
    elif input == "-":
        source["stdin"], default_name = True, "stdin"
    elif "://" in input:
        source["url"], default_name = input, urlsplit(input).hostname or "stream"
    else:
        source.update(file=input, realtime=realtime, loop=loop)
        default_name = Path(input).stem
    source["name"] = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", default_name).strip("-.") or "input"
    table: dict = {"defaults": {k: v for k, v in d.items() if v is not None},
                   "labels": list(labels) if labels is not None else ["-"],  # replaced by () below
                   "sources": [source]}
    model: dict = {"checkpoint": checkpoint} if onnx is None else {"onnx": str(onnx)}
    if threads is not None:
        model["threads"] = threads
    model.update({k: v for k, v in (("runtime", runtime), ("precision", precision)) if v is not None})
    table["model"] = model
    if clips is not None and db is None:
        raise ConfigError("--clips", "needs --db (each clip belongs to an event row)", "command line")
    if db is not None:
        table["store"] = {"db": str(db), **({"clips": str(clips)} if clips is not None else {})}
    if mqtt is not None:
        table["mqtt"] = {"url": mqtt}
    if metrics is not None:
        table["metrics"] = {"listen": metrics}
    try:
        config = cls.from_dict(table, origin="command line", expand=False)
    except ConfigError as e:
        raise ConfigError(_FLAGS.get(re.sub(r"\[\d+\]", "", e.key).split(".prompts")[0], e.key), e.reason,
                          "command line") from None
    import dataclasses

    changes: dict = {}
    if labels is None:
        changes["labels"] = ()
    if min_dbfs is None:  # the command line classifies every window unless told otherwise
        changes["defaults"] = dataclasses.replace(config.defaults, min_dbfs=None)
    return dataclasses.replace(config, **changes) if changes else config


_FLAGS = {"defaults.window": "--window", "defaults.hop": "--hop", "defaults.smooth": "--smooth",
          "defaults.threshold": "--threshold", "defaults.hysteresis": "--hysteresis",
          "defaults.min_windows": "--min-windows", "defaults.min_dbfs": "--min-dbfs", "defaults.template": "--template",
          "defaults.score": "--score",
          "labels": "--labels", "labels.name": "--labels", "sources.name": "--name", "sources.file": "--input",
          "sources.url": "--input", "sources.device": "--device", "model.threads": "--threads",
          "model.checkpoint": "--checkpoint", "model.onnx": "--onnx", "model.runtime": "--runtime",
          "model.precision": "--precision", "store.db": "--db", "store.clips": "--clips",
          "mqtt.url": "--mqtt", "mqtt": "--mqtt", "metrics.listen": "--metrics"}
