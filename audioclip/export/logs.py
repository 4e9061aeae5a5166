"""Third-party log lines that would bury the export's own output."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def dropping(logger: str, phrase: str):
    """Drop the records logged on ``logger`` ("" for the root) whose message holds ``phrase``, while the block runs."""
    def keep(record: logging.LogRecord) -> bool:
        return phrase not in record.getMessage()

    target = logging.getLogger(logger)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
