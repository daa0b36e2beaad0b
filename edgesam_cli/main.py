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
    ("download-data", "download_data", DATA_PANEL),
    ("distill", "distill", DATA_PANEL),
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
            app.add_typer(module.app, name=name, rich_help_panel=panel)
        else:
            app.command(name=name, rich_help_panel=panel)(module.command)


_register()


def main() -> None:
    """Entry point: run the app and turn toolkit errors into one-line messages and exit codes."""
    import click

    from edgesam_cli.errors import exit_code_for, format_error

    try:
        result = app(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        err_console.print("[red]Interrupted.[/red]")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        code = exit_code_for(exc)
        if code is None or os.environ.get("EDGESAM_DEBUG"):
            raise
        err_console.print(format_error(exc), highlight=False, soft_wrap=True)
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)
