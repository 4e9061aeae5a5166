"""monitor.toml and the flags: one validated configuration, one-line errors naming the file and key."""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import pytest

from audioclip.monitor.config import ConfigError, MonitorConfig, StreamDefaults, load_config, redact
from audioclip.stream.config import StreamConfig
from audioclip.stream.scoring import default_threshold

ISSUE_EXAMPLE = """
[model]
checkpoint = "full"
[defaults]
window = 5.0
hop = 0.5
smooth = 1
threshold = 0.5
hysteresis = 0.05
min_windows = 1
min_dbfs = -90
template = "{}"
[[labels]]
name = "dog"
prompts = ["dog bark", "barking dog"]
threshold = 0.6
[[labels]]
name = "speech"
prompts = ["people talking"]
event = false
privacy = true
[[sources]]
name = "porch"
url = "rtsp://viewer:${CAM_PASSWORD}@camera.local:554/stream1"
[[sources]]
name = "kitchen"
device = 3
hop = 1.0
threshold = 0.7
[[sources]]
name = "test"
file = "x.wav"
loop = true
[store]
db = "audioclip.sqlite"
clips = "clips/"
pre_roll = 2.0
post_roll = 2.0
keep_days = 30
max_gb = 5.0
[mqtt]
url = "mqtt://user:${MQTT_PASSWORD}@broker.local:1883"
prefix = "audioclip"
homeassistant = true
[[webhooks]]
url = "https://example.org/hook"
secret = "${HOOK_SECRET}"
[metrics]
listen = "127.0.0.1:9108"
"""
SECRETS = {"CAM_PASSWORD": "cam-pw-4711", "MQTT_PASSWORD": "mqtt-pw-0815", "HOOK_SECRET": "hook-secret-42"}
MINIMAL = 'labels = ["siren"]\n[[sources]]\nname = "mic"\ndevice = "default"\n'


def write(tmp_path, text: str, name: str = "monitor.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={} if environ is None else environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_issue_example_loads_with_every_value_in_place(tmp_path):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), environ=SECRETS)
    assert config.label_names == ["dog", "speech"]
    assert config.labels[0].prompts == ("dog bark", "barking dog") and config.labels[1].prompts == ("people talking",)
    assert [s.kind for s in config.sources] == ["url", "device", "file"]
    assert config.sources[0].url == "rtsp://viewer:cam-pw-4711@camera.local:554/stream1"
    assert config.sources[1].device == 3
    assert (config.sources[2].realtime, config.sources[2].loop, config.sources[2].live) == (True, True, True)
    assert config.sources[0].stall_seconds == 10.0 and config.sources[0].live
    assert config.store.clips == "clips/" and config.store.max_clip_seconds == 60.0
    assert config.mqtt.homeassistant and config.mqtt.queue == 1000
    assert config.webhooks[0].secret == "hook-secret-42" and config.webhooks[0].timeout == 5.0
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9108)
    assert config.model.checkpoint == "full" and config.model.onnx is None


def test_each_source_gets_its_effective_stream_config_and_label_arrays(tmp_path):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), environ=SECRETS)
    porch, kitchen, test = (config.stream_config(s) for s in config.sources)
    assert (porch.window, porch.hop, porch.threshold, porch.min_dbfs, porch.events) == (5.0, 0.5, 0.5, -90.0, True)
    assert (kitchen.hop, kitchen.threshold) == (1.0, 0.7)
    assert not porch.realtime and test.realtime
    params = config.label_params("kitchen")
    np.testing.assert_array_equal(params.thresholds, [0.6, 0.7])  # the label's own wins over the source's
    np.testing.assert_array_equal(config.label_params("porch").thresholds, [0.6, 0.5])
    np.testing.assert_array_equal(params.event, [True, False])
    np.testing.assert_array_equal(params.privacy, [False, True])
    np.testing.assert_array_equal(params.min_windows, [1, 1])


def test_plain_string_labels_and_defaults(tmp_path):
    config = load_config(write(tmp_path, 'labels = ["siren", "dog bark"]\n[[sources]]\nname = "in"\nstdin = true\n'))
    assert [(label.name, label.prompts, label.event, label.privacy) for label in config.labels] == [
        ("siren", ("siren",), True, False), ("dog bark", ("dog bark",), True, False)]
    assert config.sources[0].kind == "stdin" and not config.sources[0].live
    assert config.store is None and config.mqtt is None and config.metrics is None and config.webhooks == ()
    assert config.defaults.min_dbfs == -90.0 and config.defaults.template == "{}"


def test_zero_retention_limits_mean_none(tmp_path):
    store = load_config(write(tmp_path, MINIMAL + "[store]\nkeep_days = 0\n")).store
    assert (store.db, store.clips, store.keep_days, store.max_gb) == ("audioclip.sqlite", None, None, 5.0)


def test_environment_variables_expand_with_defaults(tmp_path):
    text = MINIMAL + '[mqtt]\nurl = "mqtt://${MQTT_HOST:-localhost}:${MQTT_PORT}"\nprefix = "${PREFIX:-home}"\n'
    config = load_config(write(tmp_path, text), environ={"MQTT_PORT": "1884", "PREFIX": "garden"})
    assert (config.mqtt.url, config.mqtt.prefix) == ("mqtt://localhost:1884", "garden")


@pytest.mark.parametrize("text, expected", [
    (MINIMAL.replace('["siren"]', '[{name = "a"}, {name = "b"}, {name = "c", threshold = 1.5}]'),
     "labels[2].threshold: must be between 0 and 1, got 1.5"),
    (MINIMAL + "[defaults]\ntreshold = 0.4\n", "defaults.treshold: unknown key; did you mean 'threshold'?"),
    (MINIMAL + "[mqt]\nurl = 'mqtt://x'\n", "mqt: unknown key; did you mean 'mqtt'?"),
    (MINIMAL + "[[sources]]\nname = \"mic\"\nstdin = true\n",
     "sources[1].name: 'mic' is given twice; names must be unique"),
    ('labels = ["a", "b", "a"]\n' + MINIMAL.split("\n", 1)[1],
     "labels[2].name: 'a' is given twice; names must be unique"),
    ('labels = ["a"]\n[[sources]]\nname = "cam"\nurl = "ftp://cam.local/x"\n',
     "sources[0].url: unsupported scheme 'ftp'; use one of rtsp://, rtsps://"),
    ('labels = ["a"]\n[[sources]]\nname = "cam"\nurl = "rtsp://cam"\ndevice = 2\n',
     "sources[0]: needs exactly one of url, device, file or stdin = true; got url, device"),
    ('labels = ["a"]\n[[sources]]\nname = "cam"\n', "sources[0]: needs exactly one of url, device, file or stdin"),
    ('[[sources]]\nname = "mic"\ndevice = 1\n', "labels: none given"),
    ('labels = ["a"]\n', "sources: none given"),
    (MINIMAL + '[mqtt]\nurl = "mqtt://u:${MQTT_PASSWORD}@broker"\n',
     "mqtt.url: environment variable MQTT_PASSWORD is not set"),
    (MINIMAL + "[defaults]\nthreshold = 0.3\nhysteresis = 0.3\n",
     "defaults.hysteresis: must be at least 0 and below threshold 0.3, got 0.3"),
    (MINIMAL.replace('["siren"]', '[{name = "a", hysteresis = 0.96}]'),
     "labels[0].hysteresis: must be at least 0 and below defaults.threshold 0.95, got 0.96"),
    (MINIMAL.replace('["siren"]', '[{name = "a", hysteresis = 0.3}]')
     + '[[sources]]\nname = "porch_cam"\nstdin = true\nthreshold = 0.25\n',
     "labels[0].hysteresis: must be at least 0 and below sources[1].threshold 0.25, got 0.3"),
    (MINIMAL.replace('["siren"]', '[{name = "a", threshold = 0.2}]') + "[defaults]\nhysteresis = 0.3\n",
     "defaults.hysteresis: must be at least 0 and below labels[0].threshold 0.2, got 0.3"),
    (MINIMAL + "hop = -1\n", "sources[0].hop: must be positive, got -1"),
    (MINIMAL + "realtime = false\n", "sources[0].realtime: applies to file sources only, not device"),
    (MINIMAL + "[defaults]\nwindow = \"5\"\n", "defaults.window: must be a number, got '5'"),
    (MINIMAL + "[defaults]\nsmooth = 1.5\n", "defaults.smooth: must be a whole number, got 1.5"),
    (MINIMAL + "[defaults]\ntemplate = \"a sound\"\n", "defaults.template: template 'a sound' has no '{}'"),
    (MINIMAL + "[model]\ncheckpoint = \"full\"\nonnx = \"export/\"\n", "model.onnx: give checkpoint or onnx, not both"),
    (MINIMAL + "[[webhooks]]\nurl = \"https://x.org/h\"\ntimeout = 0\n", "webhooks[0].timeout: must be above 0, got 0"),
    (MINIMAL + "[metrics]\nlisten = \"9108\"\n", "metrics.listen: must be host:port with a port 0-65535"),
    (MINIMAL + "[metrics]\nlisten = \"localhost:65536\"\n", "metrics.listen: must be host:port with a port 0-65535"),
    (MINIMAL + "[metrics]\nlisten = \"[]:9108\"\n", "metrics.listen: must be host:port"),
    (MINIMAL + "[mqtt]\nurl = \"http://broker:1883\"\n", "mqtt.url: unsupported scheme 'http'; use one of mqtt://"),
    (MINIMAL + "[mqtt]\nurl = \"mqtt://u:hunter2@broker:port\"\n", "mqtt.url: the port of broker is not a number"),
    (MINIMAL + "[mqtt]\nurl = \"mqtt://broker/audio\"\n", "mqtt.url: broker takes no path or query"),
    (MINIMAL + "[mqtt]\nurl = \"mqtt://broker\"\nprefix = \"home/#\"\n", "mqtt.prefix: 'home/#' is not a valid"),
    (MINIMAL + "[[webhooks]]\nurl = \"ftp://user:pw@host/x\"\n", "webhooks[0].url: unsupported scheme 'ftp'"),
    (MINIMAL + "[[webhooks]]\nurl = \"https://host:8o/x\"\n", "webhooks[0].url: the port of host is not a number"),
    (MINIMAL + "[mqtt]\nprefix = \"a\"\n", "mqtt.url: missing"),
    (MINIMAL + "[store]\nmax_gb = -1\n", "store.max_gb: must be at least 0, got -1"),
    (MINIMAL + "[mqtt]\nurl = \"mqtt://broker:18x3\"\n", "mqtt.url: the port of broker is not a number 0-65535"),
    (MINIMAL.replace('["siren"]', '[{name = "a", prompts = []}]'), "labels[0].prompts: must be a non-empty list"),
    (MINIMAL.replace('"mic"', '"porch/1"'), "sources[0].name: 'porch/1': use letters, digits"),
])
def test_bad_input_is_one_line_naming_the_file_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'monitor.toml'}: {expected}"), message
    assert "hunter2" not in message and "(with source" not in message  # the keys the user set, not a source's name


def test_origin_is_the_name_given_to_from_dict():
    expected = r"^monitor\.toml: labels\[0\]\.threshold: must be between 0 and 1, got 1\.5$"
    with pytest.raises(ConfigError, match=expected):
        MonitorConfig.from_dict({"labels": [{"name": "a", "threshold": 1.5}],
                                 "sources": [{"name": "x", "stdin": True}]})


def test_malformed_toml_names_the_file_line_and_column(tmp_path):
    message = error_of(tmp_path, 'labels = ["a"]\n[[sources]]\nname = "mic"\ndevice 3\n')
    assert message.startswith(f"{tmp_path / 'monitor.toml'}: not valid TOML")
    assert "line 4, column 8" in message


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")


def test_secrets_never_reach_repr_errors_or_logs(tmp_path, caplog):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), environ=SECRETS)
    log = logging.getLogger("audioclip.test")
    with caplog.at_level(logging.DEBUG):
        log.info("configuration %r", config)
        log.info("configuration %s", config)
        log.info("sources %s, mqtt %s, hooks %s", config.sources, config.mqtt, config.webhooks)
        log.info("as data %s", config.redacted())
    shown = caplog.text + repr(config) + str(config.redacted())
    assert "rtsp://***@camera.local:554/stream1" in shown and "mqtt://***@broker.local:1883" in shown
    for secret in SECRETS.values():
        assert secret not in shown
    bad = ISSUE_EXAMPLE.replace('url = "https://example.org/hook"', 'url = "https://u:${HOOK_SECRET}@"')
    message = error_of(tmp_path, bad, environ=SECRETS)
    assert "webhooks[0].url" in message and SECRETS["HOOK_SECRET"] not in message


def test_redact_hides_credentials_and_secret_query_values_wherever_a_url_appears():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live?x=1") == "rtsp://***@10.0.0.5:554/live?x=1"
    assert redact("https://TOKEN123@git.example/x") == "https://***@git.example/x"  # a user alone may be a token
    assert redact("mqtt://broker:1883") == "mqtt://broker:1883"
    assert redact("http://cam/cgi?user=a&password=hunter2&channel=1") == "http://cam/cgi?user=a&password=***&channel=1"
    assert redact("cannot open 'admin:hunter2@cam/live' (no scheme://)") == "cannot open '***@cam/live' (no scheme://)"
    assert redact("rtsp://cam/live?token=abc123#x; then https://h/?api_key=k9") == (
        "rtsp://cam/live?token=***#x; then https://h/?api_key=***")


def test_a_url_without_a_scheme_is_named_without_its_password(tmp_path):
    message = error_of(tmp_path, 'labels = ["a"]\n[[sources]]\nname = "cam"\nurl = "admin:hunter2@cam.local/live"\n')
    assert "sources[0].url" in message and "hunter2" not in message and "***@cam.local" in message, message


def test_the_defaults_are_the_streams_everywhere():
    stream, defaults = StreamConfig(), StreamDefaults()
    for name in ("window", "hop", "smooth", "hysteresis", "min_windows", "exact_windows"):
        assert getattr(defaults, name) == getattr(stream, name), name
    # the threshold is the score's: the monitor scores labels on their own (docs/scores.md), the plain stream softmax
    assert (defaults.score, defaults.threshold, stream.threshold) == ("label", default_threshold("label"),
                                                                      default_threshold("softmax"))
    softmax = MonitorConfig.from_dict({"defaults": {"score": "softmax"}, "labels": ["a"],
                                       "sources": [{"name": "in", "stdin": True}]})
    assert softmax.defaults.threshold == stream.threshold
    config = MonitorConfig.single(input="x.wav", labels=["a"])
    assert config.stream_config(config.sources[0]).hop == stream.hop == 5 * 4488 / 44100  # work sharing stays on
    assert config.stream_config(config.sources[0]).window == stream.window


def test_single_builds_the_one_source_configuration_of_the_flags():
    config = MonitorConfig.single(input="recordings/garden walk.wav", labels=["bird", "rain"], hop=1.0, threshold=0.4,
                                  db="a.sqlite", clips="clips", mqtt="mqtt://localhost:1883", metrics="127.0.0.1:9200")
    (source,) = config.sources
    assert (source.kind, source.file, source.name, source.realtime) == ("file", "recordings/garden walk.wav",
                                                                        "garden-walk", False)
    assert config.label_names == ["bird", "rain"]
    assert config.stream_config(source).hop == 1.0 and config.stream_config(source).threshold == 0.4
    assert config.defaults.min_dbfs is None  # the command line classifies every window
    assert (config.store.db, config.store.clips, config.mqtt.url, config.metrics.port) == (
        "a.sqlite", "clips", "mqtt://localhost:1883", 9200)
    assert MonitorConfig.single(input="-", labels=["a"]).sources[0].kind == "stdin"
    url = MonitorConfig.single(input="rtsp://cam.local/live", labels=["a"]).sources[0]
    assert (url.kind, url.name) == ("url", "cam.local")
    mic = MonitorConfig.single(device="USB", labels=None)
    assert (mic.sources[0].kind, mic.sources[0].device, mic.labels) == ("device", "USB", ())
    assert MonitorConfig.single().sources[0].device is None  # the default microphone
    literal = "mqtt://u:pa${ss}@broker"  # the shell expanded the flags already: no second expansion
    assert MonitorConfig.single(input="x.wav", labels=["a"], mqtt=literal).mqtt.url == literal


@pytest.mark.parametrize("flags, expected", [
    ({"hop": -1.0}, "command line: --hop: must be positive, got -1"),
    ({"threshold": 1.5}, "command line: --threshold: must be between 0 and 1, got 1.5"),
    ({"labels": ["a", "a"]}, "command line: --labels: 'a' is given twice"),
    ({"clips": "clips"}, "command line: --clips: needs --db"),
    ({"mqtt": "http://broker"}, "command line: --mqtt: unsupported scheme 'http'"),
    ({"metrics": "localhost"}, "command line: --metrics: must be host:port"),
    ({"device": 2}, "command line: --device: selects a microphone; it cannot be combined with --input"),
])
def test_single_errors_name_the_flag(flags, expected):
    flags = {"input": "x.wav", "labels": ["a"], **flags}
    with pytest.raises(ConfigError) as info:
        MonitorConfig.single(**flags)
    assert str(info.value).startswith(expected), str(info.value)


def test_a_hop_longer_than_a_sources_window_is_warned_about_once_at_load(tmp_path):
    text = MINIMAL + "hop = 6.0\n[[sources]]\nname = \"other\"\nstdin = true\n"
    with pytest.warns(UserWarning) as caught:
        config = load_config(write(tmp_path, text))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "source 'mic': hop 6 s is longer than its window 5 s" in messages[0]
    assert config.stream_config("mic").hop == 6.0
