"""The ``edgesam`` command: a Typer app whose subcommands are thin wrappers over ``edgesam_core``.

Only stdlib, typer and rich are imported at module level so ``edgesam --help`` stays instant; each
command imports the core (and torch) inside its body.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from edgesam_cli.console import err_console
from edgesam_cli.errors import catch_interrupt

app = typer.Typer(
    name="edgesam",
    help="EdgeSAM-DyT toolkit: data, distillation, evaluation, export and promptable segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DATA_PANEL = "Data & training"
DEPLOY_PANEL = "Deploy"
INFER_PANEL = "Inference"

# (command name, module under edgesam_cli.commands, help panel). Each module defines `command`,
# or `app` for a command group.
_COMMANDS: list[tuple[str, str, str]] = [
    ("export-onnx", "export_onnx", DEPLOY_PANEL),
    ("quantize", "quantize", DEPLOY_PANEL),
    ("convert-tflite", "convert_tflite", DEPLOY_PANEL),
    ("build-trt", "build_trt", DEPLOY_PANEL),
    ("export-executorch", "export_executorch", DEPLOY_PANEL),
    ("export-coreml", "export_coreml", DEPLOY_PANEL),
    ("export-web", "export_web", DEPLOY_PANEL),
    ("download-data", "download_data", DATA_PANEL),
    ("distill", "distill", DATA_PANEL),
    ("finetune", "finetune", DATA_PANEL),
    ("segment", "segment", INFER_PANEL),
    ("evaluate", "evaluate", INFER_PANEL),
    ("benchmark", "benchmark", INFER_PANEL),
    ("weights", "weights", INFER_PANEL),
    ("demo", "demo", INFER_PANEL),
]


def _register() -> None:
    for name, module_name, panel in _COMMANDS:
        module = importlib.import_module(f"edgesam_cli.commands.{module_name}")
        if hasattr(module, "app"):
            for info in module.app.registered_commands:
                info.callback = catch_interrupt(info.callback)
            app.add_typer(module.app, name=name, rich_help_panel=panel)
        else:
            app.command(name=name, rich_help_panel=panel)(catch_interrupt(module.command))


_register()


def main() -> None:
    """Entry point: run the app and turn every error into one line and an exit code (no tracebacks)."""
    from edgesam_cli.errors import INTERRUPTED, exit_code_for, format_error, is_abort, is_help_request

    try:
        result = app(standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if is_abort(exc):
            err_console.print("[red]Interrupted.[/red]")
            sys.exit(INTERRUPTED)
        if is_help_request(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        code = exit_code_for(exc)
        if code is None or os.environ.get("EDGESAM_DEBUG"):
            raise
        if code != 0:
            err_console.print(format_error(exc), highlight=False, soft_wrap=True)
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)
