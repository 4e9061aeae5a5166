"""``audioclip-stream --config monitor.toml`` (and the one-source shortcuts ``--db``, ``--clips``,
``--mqtt``, ``--metrics``, or an ``--input`` URL): the command-line side of the monitor."""

from __future__ import annotations

import logging
import sys

from ..cli_common import errors
from .config import MonitorConfig, load_config, with_http
from .output import CsvOutput, JsonlOutput, LiveOutput
from .service import Monitor, install_signals

log = logging.getLogger(__name__)

SHORTCUTS = ("db", "clips", "mqtt", "metrics", "http")


def wants_monitor(*, config, input: str | None, **shortcuts) -> bool:
    """Whether the flags ask for the service rather than today's one-stream loop."""
    return config is not None or (input is not None and "://" in input) or any(
        shortcuts.get(name) is not None for name in SHORTCUTS)


def run_monitor_cli(*, config_path, flags: dict, given: list[str], format: str, duration: float | None,
                    top_k: int, stdin=None, http: str | None = None, http_token: str | None = None) -> Monitor:
    """Build the configuration (a file, or the flags' single source), run it with the chosen output.

    ``given``: the flags the user set that a configuration file replaces; with ``--config`` they
    are an error, so that a file and a flag never silently disagree.
    """
    if config_path is not None:
        if given:
            raise ValueError(f"{', '.join(given)}: not with --config; set it in {config_path} instead")
        config = load_config(config_path)
    else:
        config = MonitorConfig.single(**flags)
    config = with_http(config, http, http_token)  # a bind beyond loopback without a token stops here
    log.debug("configuration: %s", config.redacted())
    if format == "jsonl":
        output = JsonlOutput(sys.stdout)
    elif format == "csv":
        output = None  # the labels are known once the model is loaded: see Monitor.output_factory
    else:
        # on the log handler's console (stderr): Rich prints each log line above the table, whole
        output = LiveOutput(errors, top_k=min(top_k, 3))
    monitor = Monitor(config, output=output, config_path=None if config_path is None else str(config_path),
                      stream_extra={"duration": duration} if duration is not None else None, stdin=stdin)
    if format == "csv":
        monitor.output_factory = lambda labels: CsvOutput(sys.stdout, labels, event_out=sys.stderr)
    install_signals(monitor)
    monitor.run()
    return monitor
