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
from typer.core import TyperCommand, TyperGroup

from .model.labels import ParameterError


class OutputConsole(Console):
    """A rich console for stdout that a closed pipe (``| head``) stops quietly: rich's own exits 1.

    The ``BrokenPipeError`` it raises reaches :func:`one_line_errors`, which exits 0.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise BrokenPipeError("stdout closed")


errors = Console(stderr=True)

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C, in all three tools: the shell's 128 + SIGINT."""


def _plain_flags(params: list) -> list:
    for param in params:  # typer's rich help would show "<bool>" after a flag, inviting "--flag true"
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A typer command whose ``--help`` shows flags without a ``<bool>`` value: ``@app.command(cls=Command)``."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


class Group(TyperGroup):
    """:class:`Command`'s help for a command group: ``typer.Typer(cls=Group)``."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audioclip-stream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def version_option(prog: str):
    """A ``--version`` option for a command or a group's callback: prints ``prog`` and the package version, exits."""
    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {package_version()}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, expose_value=False,
                        help="Show the version and exit.")


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

    Ctrl-C prints ``interrupted`` and exits 130 (:data:`INTERRUPTED_EXIT`); a closed stdout
    (``| head``) exits 0 quietly.
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
                raise typer.Exit(INTERRUPTED_EXIT) from None
            finally:
                if cleanup is not None:
                    cleanup()
        return wrapper
    return decorate


def setup_logging(*, verbose: bool) -> None:
    """Log to stderr: this package at INFO when ``verbose``, else WARNING; others at WARNING.

    On a terminal through rich; to a file or a pipe as plain ``LEVEL message`` lines, neither
    wrapped nor padded, so that they grep and diff.
    """
    if errors.is_terminal:
        handler = RichHandler(console=errors, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
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
