"""`edgesam weights`: list and download the published checkpoints (cached in $EDGESAM_HOME)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesam_cli.console import out_console
from edgesam_cli.options import DecoderFromOpt

EXAMPLES = """
[b]Examples[/b]

  [dim]# what is published, and what is already cached[/dim]
  edgesam weights list

  [dim]# fetch the EdgeSAM-DyT final model (resumes an interrupted download)[/dim]
  edgesam weights download edge_sam_dyt

  [dim]# fetch SAM ViT-H again even if it is cached, into another cache folder[/dim]
  EDGESAM_HOME=/data/edgesam edgesam weights download vit_h --force

  [dim]# complete a distillation step-1 (encoder-only) checkpoint with SAM's prompt encoder + mask decoder[/dim]
  edgesam weights merge step1/ckpt_epoch_19.pth --decoder-from sam_vit_h_4b8939.pth --out edge_sam_dyt_step1_full.pth

"""

app = typer.Typer(
    help="List, download and merge checkpoints (downloads verified and cached in $EDGESAM_HOME, default "
         "~/.cache/edgesam).",
    epilog=EXAMPLES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _size(size: object) -> str:
    if not isinstance(size, int):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return "?"


@app.command("list", epilog=EXAMPLES)
def list_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON on stdout.")] = False,
) -> None:
    """Show every published checkpoint: name, model variant, size and whether it is cached."""
    import json

    from rich.table import Table

    from edgesam_core.weight_registry import cache_dir, list_weights

    rows = list_weights()
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Published weights (cache: {cache_dir()})")
    for column in ("name", "variant", "size", "cached", "description"):
        table.add_column(column, no_wrap=column in ("name", "variant"))
    for row in rows:
        table.add_row(str(row["name"]), str(row["variant"]), _size(row["size"]),
                      "[green]yes[/green]" if row["cached"] else "no", str(row["description"]))
    out_console.print(table)


@app.command("download", epilog=EXAMPLES)
def download_command(
    name: Annotated[str, typer.Argument(help="Entry from 'edgesam weights list' (or a model variant).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even if the file is cached.")] = False,
) -> None:
    """Download, verify (size, SHA-256, loads as its variant) and cache one checkpoint; prints its path."""
    from edgesam_cli.console import RichProgress
    from edgesam_core.weight_registry import ensure_weights

    with RichProgress(transfer=True) as progress:
        path = ensure_weights(name, progress=progress, force=force)
    typer.echo(str(path))


@app.command("merge", epilog=EXAMPLES)
def merge_command(
    encoder: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="Encoder-only checkpoint (distillation step 1, upstream or ours).")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Full checkpoint to write.")],
    decoder_from: DecoderFromOpt = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Variant of the result; default: recognised from the encoder (edge_sam, or "
        "edge_sam_dyt_frozen_mask for a DyT encoder: SAM's decoder unchanged).")] = None,
) -> None:
    """Merge an encoder-only checkpoint with SAM's prompt encoder + mask decoder into one full checkpoint."""
    from edgesam_cli.console import RichProgress, err_console
    from edgesam_core.merge import decoder_source_for, merge_encoder_checkpoint

    source = decoder_from
    if source is None:
        with RichProgress(transfer=True) as download:
            source = decoder_source_for(encoder, None, download)
    if source is None:
        from edgesam_core.errors import CheckpointMismatchError

        raise CheckpointMismatchError(f"{encoder} is not an encoder-only checkpoint; it needs no merging")
    path, variant = merge_encoder_checkpoint(encoder, source, out, model=model)
    err_console.print(f"wrote a full '{variant}' checkpoint (load it with --model {variant})", highlight=False)
    typer.echo(str(path))
