"""Turn exceptions into one-line messages and exit codes (documented in the README)."""

from __future__ import annotations

import click
from rich.markup import escape


def exit_code_for(exc: BaseException) -> int | None:
    """Exit code for a known error, or None to let the traceback through."""
    if isinstance(exc, click.exceptions.Abort):
        return 130
    if isinstance(exc, click.ClickException):
        return exc.exit_code
    # Imported lazily: edgesam_core.errors is torch-free but keep startup minimal.
    from edgesam_core.errors import EdgeSamError

    if isinstance(exc, EdgeSamError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return 2
    return None


def format_error(exc: BaseException) -> str:
    """One line: 'Error: <message>'."""
    if isinstance(exc, click.ClickException):
        return f"[red]Error:[/red] {escape(exc.format_message())}"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.strerror or message}: {exc.filename}"
    return f"[red]Error:[/red] {escape(message)}"
