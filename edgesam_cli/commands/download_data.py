"""`edgesam download-data`: fetch the SA-1B training subset into datasets/SA-1B."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

EXAMPLES = """
[b]Examples[/b]

  [dim]# the full 5 % subset (50 train + 5 val shards, about 600 GB), 4 downloads at a time[/dim]
  edgesam download-data --links sa1b_links.txt --jobs 4

  [dim]# the original EdgeSAM 1 % subset (sa_000020-029) plus the 5 val shards[/dim]
  edgesam download-data --links sa1b_links.txt --split train --shards 10
  edgesam download-data --links sa1b_links.txt --split val

  [dim]# two named shards into a custom folder, keeping the tar files[/dim]
  edgesam download-data --links sa1b_links.txt --names sa_000020,sa_000130 --out /data/SA-1B --keep-tars

The links file is the tab-separated 'file_name<TAB>cdn_link' list from
https://ai.meta.com/datasets/segment-anything-downloads/ (its links expire; entries may also be
local paths or file:// URLs). Finished shards are recorded in OUT/sa1b_manifest.json and skipped
on the next run; interrupted downloads resume.
"""


def command(
    links: Annotated[Optional[Path], typer.Option(
        "--links", dir_okay=False,
        help="Meta's SA-1B links file (file_name<TAB>cdn_link); needed unless every shard is already done.")] = None,
    split: Annotated[str, typer.Option(
        "--split", help="Which part of the packaged subset: train (50 shards), val (5) or all.")] = "all",
    shards: Annotated[Optional[int], typer.Option(
        "--shards", min=1, help="Only the first N shards of each selected split.")] = None,
    names: Annotated[Optional[str], typer.Option(
        "--names", help="Comma-separated shard names instead of --shards, e.g. sa_000020,sa_000021.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", file_okay=False, help="Dataset root; images/ and annotations/ are created inside.")
    ] = Path("datasets/SA-1B"),
    jobs: Annotated[int, typer.Option("--jobs", min=1, max=32, help="Shards downloaded in parallel.")] = 2,
    keep_tars: Annotated[bool, typer.Option(
        "--keep-tars", help="Keep OUT/tars/*.tar after extraction (otherwise deleted).")] = False,
) -> None:
    """Download, verify and extract SA-1B shards (the distillation training data)."""
    from edgesam_cli.console import RichProgress, out_console
    from edgesam_core.data.sa1b_download import download_sa1b
    from edgesam_core.data.shards import select_shards
    from edgesam_core.errors import InputError

    if split not in ("train", "val", "all"):
        raise InputError(f"--split must be train, val or all, not '{split}'")
    name_list = [n for n in (names or "").split(",") if n.strip()] or None
    selected = select_shards(split, count=shards, names=name_list)
    with RichProgress(transfer=True) as progress:
        report = download_sa1b(out, selected, links_file=links, jobs=jobs, keep_tars=keep_tars, progress=progress)
    mb = report.bytes_downloaded / 1e6
    speed = mb / report.seconds if report.seconds > 0 else 0.0
    out_console.print(
        f"{len(report.finished)} shard(s) downloaded ({mb:,.1f} MB at {speed:,.1f} MB/s, "
        f"{report.images:,} images), {len(report.skipped)} already present -> {report.out}"
    )


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
