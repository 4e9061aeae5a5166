"""What the three command-line tools share: one-line errors for user mistakes, and logging to stderr."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Mapping

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from .model.labels import ParameterError

errors = Console(stderr=True)

USER_ERROR_EXIT = 2


def as_flag(parameter: str) -> str:
    """The command-line flag of a library parameter: ``top_k`` -> ``--top-k``."""
    return "--" + parameter.replace("_", "-")


class _Flags(dict):
    def get(self, parameter: str, default=None) -> str:
        return self[parameter] if parameter in self else as_flag(parameter)


def error_line(error: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """The first line of ``error``'s message; a :class:`ParameterError` names flags, not parameters
    (``flags`` overrides :func:`as_flag` where a command spells one differently)."""
    if isinstance(error, ParameterError):
        message = error.with_names(_Flags(flags or {}))
    else:
        message = str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def one_line_errors(*, user_errors: tuple[type[BaseException], ...] = (ValueError, OSError),
                    cleanup: Callable[[], None] | None = None, flags: Mapping[str, str] | None = None):
    """Decorate a typer command: ``user_errors`` print ``error: <first line>`` on stderr and exit 2
    (parameters named as flags, :func:`error_line`).

    Ctrl-C prints ``interrupted`` and exits 130; a closed stdout (``| head``) exits 0 quietly.
    ``cleanup`` runs however the command ends.
    """
    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except BrokenPipeError:  # the reader of stdout went away: stop quietly
                sys.stdout = open(os.devnull, "w")
                raise typer.Exit(0) from None
            except user_errors as e:
                message = error_line(e, flags)
                errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
                raise typer.Exit(USER_ERROR_EXIT) from None
            except KeyboardInterrupt:
                errors.print("interrupted")
                raise typer.Exit(130) from None
            finally:
                if cleanup is not None:
                    cleanup()
        return wrapper
    return decorate


def setup_logging(*, verbose: bool) -> None:
    """Log to stderr through rich: this package at INFO when ``verbose``, else WARNING; others at WARNING."""
    handler = RichHandler(console=errors, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("audioclip").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    warnings.formatwarning = _warning_line


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as its message alone: a user of the command has no use for the source line."""
    return str(message)


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read labels file ({e})") from e
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def labels_from_options(labels: str | None, labels_file: Path | None) -> list[str] | None:
    """The labels of ``--labels "a,b"`` or ``--labels-file F`` (not both); None when neither is given."""
    if labels is not None and labels_file is not None:
        raise ValueError("give --labels or --labels-file, not both")
    if labels_file is not None:
        return read_labels_file(labels_file)
    if labels is not None:
        return [label.strip() for label in labels.split(",")]
    return None
