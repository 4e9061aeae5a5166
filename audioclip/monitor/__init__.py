"""The always-on monitor: configuration, network sources, sinks and the service, on top of ``stream/``."""
