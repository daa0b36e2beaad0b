"""Verify and safely extract one SA-1B tar shard in a single pass.

A shard is read member by member into a staging folder; only when the whole archive has been read
(every member's bytes present, the end-of-archive marker found) are the files moved into place. Anything
that is not a plain ``*.jpg`` / ``*.json`` file with a harmless name is skipped, so a hostile or broken
archive can never write outside the output folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from edgesam_core.errors import DatasetError
from edgesam_core.progress import NullProgress, Progress

_CHUNK = 1 << 20
_KINDS = {".jpg": "images", ".json": "annotations"}


@dataclass
class ExtractResult:
    """Outcome of :func:`extract_shard`.

    Attributes:
        images: number of ``.jpg`` files moved into place.
        annotations: number of ``.json`` files moved into place.
        skipped: names of members that were left out (unsafe or not jpg/json), at most 20 kept.
        skipped_count: how many members were left out in total.
        sha256: hex digest of the whole tar file.
        size: tar size in bytes.
    """

    images: int = 0
    annotations: int = 0
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0
    sha256: str = ""
    size: int = 0


class _HashingReader:
    """A seekable read-only file that hashes every byte of the underlying file exactly once.

    ``tarfile`` reads forward but seeks over data it does not need; bytes skipped that way are hashed
    when the reader catches up, so the digest always covers the whole file in order.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha256()
        self._hashed = 0

    def _catch_up(self, position: int) -> None:
        if position <= self._hashed:
            return
        here = self._file.tell()
        self._file.seek(self._hashed)
        while self._hashed < position:
            block = self._file.read(min(_CHUNK, position - self._hashed))
            if not block:
                break
            self._hash.update(block)
            self._hashed += len(block)
        self._file.seek(here)

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        self._catch_up(start)
        data = self._file.read(size)
        if start <= self._hashed < start + len(data):
            self._hash.update(data[self._hashed - start:])
            self._hashed = start + len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def hexdigest(self) -> str:
        self._catch_up(os.fstat(self._file.fileno()).st_size)
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


def safe_member_target(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """Return ``(kind, file_name)`` for a member we may extract, or ``None`` to skip it.

    Only regular files named ``*.jpg`` / ``*.json`` qualify, and only when the member name is relative
    and has no ``..`` component; the folder part is dropped (the layout is flat).
    """
    if not member.isreg():
        return None
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None
    base = path.name
    if not base or base.startswith(".") or "\x00" in base:
        return None
    kind = _KINDS.get(PurePosixPath(base).suffix.lower())
    return None if kind is None else (kind, base)


def _has_end_marker(path: Path, offset: int) -> bool:
    """True when the archive holds the two zero blocks that close a complete tar at ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        block = f.read(2 * tarfile.BLOCKSIZE)
    return len(block) == 2 * tarfile.BLOCKSIZE and block.count(0) == len(block)


def extract_shard(tar_path: str | Path, images_dir: str | Path, annotations_dir: str | Path,
                  staging_root: str | Path, expected_size: int | None = None,
                  progress: Progress | None = None, description: str | None = None) -> ExtractResult:
    """Verify ``tar_path`` completely and move its images and annotations into place.

    Args:
        tar_path: the downloaded shard.
        images_dir: destination of ``*.jpg`` members (created if needed).
        annotations_dir: destination of ``*.json`` members.
        staging_root: folder on the same filesystem for the staging copy (removed afterwards).
        expected_size: the size the server announced; a different size fails verification.
        progress: receives one task advanced in tar bytes read.
        description: label of that task (default: ``"<tar name> verify+extract"``).

    Returns:
        Counts, skipped members and the tar's sha256.

    Raises:
        DatasetError: the tar is truncated, corrupt or has the wrong size; nothing was moved into place.
    """
    tar_path, images_dir, annotations_dir = Path(tar_path), Path(images_dir), Path(annotations_dir)
    size = tar_path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DatasetError(f"{tar_path.name} has {size} bytes but the server announced {expected_size}; "
                           "it is incomplete and will be fetched again")
    Path(staging_root).mkdir(parents=True, exist_ok=True)
    staging = Path(staging_root) / f".extract-{tar_path.stem}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "annotations").mkdir()
    result = ExtractResult(size=size)
    reader = _HashingReader(tar_path)
    progress = progress or NullProgress()
    task = progress.add_task(description or f"{tar_path.name} verify+extract", total=size)
    try:
        try:
            _read_members(reader, tar_path, staging, result, lambda: progress.update(task, completed=reader.tell()))
        finally:
            result.sha256 = reader.hexdigest()
            reader.close()
            progress.finish(task)
        images_dir.mkdir(parents=True, exist_ok=True)
        annotations_dir.mkdir(parents=True, exist_ok=True)
        for kind, dest in (("images", images_dir), ("annotations", annotations_dir)):
            for entry in os.scandir(staging / kind):
                os.replace(entry.path, dest / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _read_members(reader: _HashingReader, tar_path: Path, staging: Path, result: ExtractResult,
                  report: Callable[[], None]) -> None:
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[arg-type]
            for member in tar:
                target = safe_member_target(member)
                if target is None:
                    if not member.isdir():
                        result.skipped_count += 1
                        if len(result.skipped) < 20:
                            result.skipped.append(member.name)
                    continue
                kind, base = target
                _copy_member(tar, member, staging / kind / base, tar_path)
                if kind == "images":
                    result.images += 1
                else:
                    result.annotations += 1
                if (result.images + result.annotations) % 64 == 0:
                    report()
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{tar_path.name} is not a readable tar ({exc}); it will be fetched again") from exc
    if not _has_end_marker(tar_path, end):
        raise DatasetError(f"{tar_path.name} is truncated (no end-of-archive marker after "
                           f"{result.images + result.annotations} files); it will be fetched again")


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, tar_path: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise DatasetError(f"{tar_path.name}: member {member.name} has no data")
    written = 0
    with source, open(dest, "wb") as out:
        while True:
            block = source.read(_CHUNK)
            if not block:
                break
            out.write(block)
            written += len(block)
    if written != member.size:
        raise DatasetError(f"{tar_path.name} is truncated inside {member.name} ({written} of {member.size} bytes)")
