"""Turn exceptions into one-line messages and exit codes (documented in the README).

Nothing here names a CLI library's exception classes: typer 0.29 raises its own copy of click's exceptions,
and the next release may move them again. A usage error is recognised by its public protocol instead
(an integer ``exit_code`` and a ``format_message()``), an abort by its name, so both copies, and click's
own, are handled the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rich.markup import escape

INTERRUPTED = 130


class Interrupted(BaseException):
    """Ctrl+C inside a command, carried past the CLI library (typer turns KeyboardInterrupt into a silent 130)."""


def catch_interrupt(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so Ctrl+C reaches ``main`` as :class:`Interrupted` (signature kept for typer)."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted() from exc

    return wrapper


def is_abort(exc: BaseException) -> bool:
    """Ctrl+C, whether raised directly, carried as :class:`Interrupted` or wrapped by the library as ``Abort``."""
    return isinstance(exc, (KeyboardInterrupt, Interrupted)) or any(
        cls.__name__ == "Abort" for cls in type(exc).__mro__)


def is_exit(exc: BaseException) -> bool:
    """A deliberate ``typer.Exit`` / ``click.exceptions.Exit`` carrying an exit code."""
    return any(cls.__name__ == "Exit" for cls in type(exc).__mro__) and isinstance(
        getattr(exc, "exit_code", None), int)


def is_usage_error(exc: BaseException) -> bool:
    """A CLI library's own error (bad option, missing argument, bad value): exit code plus a message."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "format_message", None))


def is_help_request(exc: BaseException) -> bool:
    """Group called with no subcommand (``no_args_is_help``): the library prints the help itself."""
    return type(exc).__name__ == "NoArgsIsHelpError"


def exit_code_for(exc: BaseException) -> int | None:
    """Exit code for a known error, or None to let the traceback through."""
    if is_abort(exc):
        return INTERRUPTED
    if is_exit(exc):
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if is_usage_error(exc):
        return int(exc.exit_code)  # type: ignore[attr-defined]
    # Imported lazily: edgesam_core.errors is torch-free but keep startup minimal.
    from edgesam_core.errors import EdgeSamError

    if isinstance(exc, EdgeSamError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return 2
    if isinstance(exc, UnicodeDecodeError):
        return 2
    return None


def _command_path(exc: BaseException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None)
    return path if isinstance(path, str) and path else None


def format_error(exc: BaseException) -> str:
    """One line: 'Error: <message>' (usage errors add where to read the command's help)."""
    if is_usage_error(exc):
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        path = _command_path(exc)
        hint = f" (see '{path} --help')" if path else ""
        return f"[red]Error:[/red] {escape(message)}{escape(hint)}"
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        message = f"a file that should be text is binary or not UTF-8 ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, OSError) and exc.filename:
        message = f"{exc.strerror or message}: {exc.filename}"
    return f"[red]Error:[/red] {escape(message)}"
