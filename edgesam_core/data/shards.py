"""Which SA-1B shards to fetch and where each one comes from.

SA-1B ships as 1000 tar shards ``sa_000000.tar`` ... ``sa_000999.tar``. The training recipe uses a fixed
5 % subset (50 train shards, 5 val shards) that is packaged as ``sa1b_subset.json``. Meta hands out the
download URLs as a tab-separated "links file" (``file_name<TAB>cdn_link`` with a header line) whose
signed links expire; it cannot be redistributed, so users pass their own copy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from edgesam_core.errors import InputError

META_DOWNLOAD_PAGE = "https://ai.meta.com/datasets/segment-anything-downloads/"
SPLITS = ("train", "val")
_SHARD_RE = re.compile(r"^sa_(\d{6})$")


@dataclass(frozen=True)
class Shard:
    """One SA-1B tar shard selected for download.

    Attributes:
        name: shard stem, e.g. ``"sa_000020"``.
        split: ``"train"`` or ``"val"``: the folder its images and annotations go to.
        source: URL (``http(s)://`` or ``file://``) or local path of the tar; ``None`` until resolved.
    """

    name: str
    split: str
    source: str | None = None

    @property
    def tar_name(self) -> str:
        """File name of the shard archive (``sa_000020.tar``)."""
        return f"{self.name}.tar"


def normalize_shard_name(text: str) -> str:
    """Turn ``sa_000020``, ``sa_000020.tar`` or ``20`` into the canonical ``sa_000020``.

    Raises:
        InputError: the text is not a shard name.
    """
    raw = text.strip()
    if raw.endswith(".tar"):
        raw = raw[:-4]
    if raw.isdigit() and len(raw) <= 6:
        raw = f"sa_{int(raw):06d}"
    if not _SHARD_RE.match(raw):
        raise InputError(f"'{text}' is not an SA-1B shard name; expected names like sa_000020 (or sa_000020.tar)")
    return raw


def packaged_subset() -> dict[str, list[str]]:
    """Return the packaged 5 % subset: ``{"train": [50 names], "val": [5 names]}``."""
    text = resources.files("edgesam_core.data").joinpath("sa1b_subset.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {split: list(data[split]) for split in SPLITS}


def select_shards(split: str = "all", count: int | None = None, names: list[str] | None = None) -> list[Shard]:
    """Pick shards from the packaged subset.

    Args:
        split: ``"train"``, ``"val"`` or ``"all"``.
        count: keep only the first ``count`` shards of each selected split (``--split train --shards 10``
            is the original EdgeSAM 1 % subset, sa_000020-029).
        names: explicit shard names instead of ``count``. Names outside the packaged subset need
            ``split`` set to ``train`` or ``val`` to say where they go.

    Returns:
        Shards in subset order (train first), without sources.

    Raises:
        InputError: unknown split, bad count, both ``count`` and ``names``, or an unplaceable name.
    """
    if split not in (*SPLITS, "all"):
        raise InputError(f"Unknown split '{split}'; use train, val or all")
    if count is not None and names:
        raise InputError("Pass either --shards N or --names, not both")
    if count is not None and count < 1:
        raise InputError(f"--shards must be at least 1, got {count}")
    subset = packaged_subset()
    wanted_splits = SPLITS if split == "all" else (split,)
    if not names:
        shards = []
        for s in wanted_splits:
            chosen = subset[s] if count is None else subset[s][:count]
            shards += [Shard(name, s) for name in chosen]
        return shards

    split_of = {name: s for s in SPLITS for name in subset[s]}
    shards, seen = [], set()
    for text in names:
        name = normalize_shard_name(text)
        if name in seen:
            continue
        seen.add(name)
        known = split_of.get(name)
        if split != "all":
            if known is not None and known != split:
                raise InputError(f"{name} belongs to the {known} split of the subset, not {split}; "
                                 f"drop it or use --split {known}")
            shards.append(Shard(name, split))
        elif known is not None:
            shards.append(Shard(name, known))
        else:
            raise InputError(f"{name} is not in the packaged train/val subset; pass --split train or --split val "
                             "to say which folder it belongs to")
    return shards


def read_links_file(path: str | Path) -> dict[str, str]:
    """Parse Meta's SA-1B links file into ``{"sa_000020": source}``.

    The first line is the header ``file_name<TAB>cdn_link``; every other non-blank line is
    ``sa_XXXXXX.tar<TAB><url or path>``. A source may be an ``http(s)://`` URL, a ``file://`` URL or a
    local path; relative paths are taken relative to the links file's folder.

    Raises:
        InputError: missing file, missing header, malformed line or duplicate shard.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Links file {path} does not exist; download it from {META_DOWNLOAD_PAGE} "
                         "(the 'Download text file' link) and pass it with --links")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"links file {path} is not text (byte {exc.start} is not UTF-8): pass the tab-separated "
                         "file_name/cdn_link list from Meta's SA-1B download page") from exc
    if not lines or lines[0].split()[:1] != ["file_name"]:
        raise InputError(f"{path} is not an SA-1B links file: its first line must be the header "
                         f"'file_name<TAB>cdn_link' as in the file from {META_DOWNLOAD_PAGE}")
    links: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) != 2 or not parts[0].endswith(".tar"):
            raise InputError(f"{path}:{number}: expected 'sa_XXXXXX.tar<TAB>link', got {line.strip()[:80]!r}")
        try:
            name = normalize_shard_name(parts[0])
        except InputError:
            raise InputError(f"{path}:{number}: '{parts[0]}' is not an SA-1B shard file name") from None
        if name in links:
            raise InputError(f"{path}:{number}: {name} is listed twice")
        links[name] = _resolve_source(parts[1], path.parent)
    if not links:
        raise InputError(f"{path} lists no shards; download a fresh copy from {META_DOWNLOAD_PAGE}")
    return links


def _resolve_source(link: str, base: Path) -> str:
    scheme = urlparse(link).scheme.lower()
    if scheme in ("http", "https", "file"):
        return link
    if len(scheme) > 1:  # a one-letter scheme is a Windows drive, i.e. a path
        raise InputError(f"Unsupported link scheme '{scheme}://' in links file; use http(s)://, file:// or a path")
    p = Path(link).expanduser()
    return str(p if p.is_absolute() else (base / p))


def local_path_of(source: str) -> Path | None:
    """The filesystem path for a ``file://`` URL or plain path source; ``None`` for http(s)."""
    parsed = urlparse(source)
    if parsed.scheme.lower() in ("http", "https"):
        return None
    if parsed.scheme.lower() == "file":
        return Path(unquote(parsed.path))
    return Path(source)


def attach_sources(shards: list[Shard], links: dict[str, str]) -> list[Shard]:
    """Return ``shards`` with ``source`` filled from ``links``.

    Raises:
        InputError: some shards are not in the links file (all of them are named).
    """
    missing = [s.name for s in shards if s.name not in links]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"The links file has no entry for {shown}; use the complete file from "
                         f"{META_DOWNLOAD_PAGE} or drop these shards")
    return [Shard(s.name, s.split, links[s.name]) for s in shards]
