"""The CLI's one error policy, for every command: one line on stderr, no traceback.

Exit ``USAGE`` (2) for a bad argument or option, ``FAILURE`` (1) for a failure (a bad model, an unreachable
service); the codes are ``ferry.cli``'s, so ``ferry serve``'s typer-free path uses the same.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn, TextIO, TypeVar

import typer

from ferry.cli import FAILURE, USAGE
from ferry.errors import FerryError, FerryWarning, UsageError

T = TypeVar("T")


def fail(message: str, code: int = FAILURE) -> NoReturn:
    """Print ``error: message`` as one line and exit with ``code``."""
    line = " ".join(message.split())  # one line, however the message was written
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def run(action: Callable[[], T]) -> T:
    """Run a library call; a FerryError becomes one line and exit 2 (usage) or 1 (failure)."""
    try:
        return action()
    except FerryError as exc:
        fail(exc.message, USAGE if isinstance(exc, UsageError) else FAILURE)


class FerryTyper(typer.Typer):
    """A Typer app whose every error, click's usage errors and unexpected exceptions included, is one line."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        if not hasattr(warnings.showwarning, "ferry_lines"):  # once per process, however often the app runs
            warnings.showwarning = _warning_line(warnings.showwarning)
        try:
            code = super().__call__(*args, **kwargs)
        except typer.TyperException as exc:  # Typer's own click: usage errors (exit 2) and the like
            _typer_error(exc)
        except typer.Abort:
            _exit_line("aborted", FAILURE)
        except FerryError as exc:
            _exit_line(exc.message, USAGE if isinstance(exc, UsageError) else FAILURE)
        except Exception as exc:  # a bug, or an error no command expected: still one line
            _exit_line(f"{type(exc).__name__}: {exc}", FAILURE)
        sys.exit(code if isinstance(code, int) else 0)


def _warning_line(show: Callable[..., None]) -> Callable[..., None]:
    """Ferry's own warnings as one ``warning:`` line on stderr; any other warning as Python shows it."""

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, FerryWarning):
            typer.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.ferry_lines = True  # type: ignore[attr-defined]
    return showwarning


def _typer_error(exc: Any) -> NoReturn:
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare ``ferry`` or ``ferry examples``: the help
        exc.show()
        sys.exit(USAGE)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _exit_line(exc.format_message() + hint, int(getattr(exc, "exit_code", FAILURE)))


def _exit_line(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)
