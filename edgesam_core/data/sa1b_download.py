"""Download, verify and extract SA-1B shards into the layout the datasets read.

Layout under ``out`` (default ``datasets/SA-1B``)::

    images/{train,val}/sa_<id>.jpg
    annotations/{train,val}/sa_<id>.json
    sa1b_manifest.json            # finished shards; written atomically after each one
    tars/sa_XXXXXX.tar(.part)     # while downloading; removed after extraction unless keep_tars

A shard counts as done only once its whole tar was read back and every file moved into place, so an
interrupted run (Ctrl-C, a dropped connection) never leaves a half shard marked finished; the next run
resumes partial downloads and skips finished shards.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgesam_core.data.archive import extract_shard
from edgesam_core.data.shards import META_DOWNLOAD_PAGE, Shard, attach_sources, local_path_of, read_links_file
from edgesam_core.errors import DatasetError, DownloadError, EdgeSamError, InputError
from edgesam_core.progress import NullProgress, Progress

MANIFEST_NAME = "sa1b_manifest.json"
MANIFEST_VERSION = 1
TYPICAL_SHARD_BYTES = 11 * 10**9  # SA-1B shards are 10-12 GB; used when the server sends no size
_STAGING = ".staging"


@dataclass
class DownloadReport:
    """What :func:`download_sa1b` did.

    Attributes:
        out: the dataset root.
        finished: shards downloaded and extracted in this run.
        skipped: shards already recorded in the manifest.
        bytes_downloaded: tar bytes received in this run (resumed parts not counted twice).
        images: images extracted in this run.
        seconds: wall time of the run.
    """

    out: Path
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    images: int = 0
    seconds: float = 0.0


class _TotalProgress:
    """Forwards a shard's progress and mirrors every byte onto one shared "total" task."""

    def __init__(self, inner: Progress, total_task: int, lock: threading.Lock) -> None:
        self._inner, self._total, self._lock = inner, total_task, lock
        self.inner = inner  # for tasks that must not count towards the byte total (extraction)
        self._done: dict[int, float] = {}
        self.received = 0.0

    def add_task(self, description: str, total: float | None = None) -> int:
        task = self._inner.add_task(description, total=total)
        self._done[task] = 0.0
        return task

    def advance(self, task_id: int, amount: float = 1.0) -> None:
        self._inner.advance(task_id, amount)
        self._mirror(task_id, self._done.get(task_id, 0.0) + amount)

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        self._inner.update(task_id, completed=completed, total=total, description=description)
        if completed is not None:
            self._mirror(task_id, completed)

    def _mirror(self, task_id: int, completed: float) -> None:
        delta = completed - self._done.get(task_id, 0.0)
        self._done[task_id] = completed
        with self._lock:
            self.received += max(delta, 0.0)
            self._inner.advance(self._total, delta)

    def finish(self, task_id: int) -> None:
        self._inner.finish(task_id)

    def log(self, message: str) -> None:
        self._inner.log(message)


def load_manifest(out: str | Path) -> dict:
    """Read ``out/sa1b_manifest.json`` (an empty manifest when absent).

    Raises:
        DatasetError: the manifest exists but is not valid JSON of the expected shape.
    """
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return {"format_version": MANIFEST_VERSION, "shards": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("shards"), dict):
            raise ValueError("no 'shards' table")
    except (ValueError, AttributeError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); delete it to re-check every shard") from exc
    return data


def _write_manifest(out: Path, manifest: dict) -> None:
    path = out / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remote_size(source: str, session=None, timeout: float = 30.0) -> int | None:
    """Byte size of a shard source: ``stat`` for local paths, ``Content-Length`` of a HEAD for URLs.

    Returns ``None`` when an HTTP server does not announce a size.

    Raises:
        InputError: a local source does not exist.
    """
    path = local_path_of(source)
    if path is not None:
        if not path.is_file():
            raise InputError(f"Shard file {path} from the links file does not exist")
        return path.stat().st_size
    import requests

    try:
        response = (session or requests).head(source, allow_redirects=True, timeout=timeout)
    except requests.RequestException:
        return None
    length = response.headers.get("Content-Length")
    if response.status_code != 200 or length is None or not length.isdigit():
        return None
    return int(length)


def check_free_space(out: Path, sizes: list[int | None], jobs: int, keep_tars: bool) -> int:
    """Raise :class:`DownloadError` unless ``out`` can hold the extracted shards plus tars in flight.

    Extracted files take about as much room as their tar; without ``keep_tars`` only ``jobs`` tars exist
    at once. Unknown sizes count as a typical 11 GB shard. Returns the bytes needed.
    """
    known = [s if s is not None else TYPICAL_SHARD_BYTES for s in sizes]
    tars = sum(known) if keep_tars else sum(sorted(known, reverse=True)[:max(jobs, 1)])
    partial = sum(p.stat().st_size for p in (out / "tars").glob("*.part")) if (out / "tars").is_dir() else 0
    need = max(sum(known) + tars - partial, 0)
    free = shutil.disk_usage(out).free
    if free < need:
        raise DownloadError(f"Not enough free disk space in {out}: {len(known)} shard(s) need about "
                            f"{need / 1e9:.1f} GB, only {free / 1e9:.1f} GB free; free some space, choose "
                            "another --out, or download fewer shards with --shards N")
    return need


def _default_fetcher() -> Callable[..., Path]:
    from edgesam_core.download import fetch

    return fetch


def download_sa1b(out: str | Path, shards: list[Shard], *, links_file: str | Path | None = None,
                  jobs: int = 1, keep_tars: bool = False, attempts: int = 3,
                  progress: Progress | None = None, check_space: bool = True,
                  fetcher: Callable[..., Path] | None = None, session=None) -> DownloadReport:
    """Fetch, verify and extract ``shards`` into ``out``, skipping shards the manifest lists as done.

    Args:
        out: dataset root (``images/``, ``annotations/`` and the manifest go here).
        shards: from :func:`edgesam_core.data.shards.select_shards`.
        links_file: Meta's links file; needed only when some shard must be downloaded.
        jobs: shards downloaded in parallel.
        keep_tars: keep ``tars/<shard>.tar`` after extraction.
        attempts: downloads per shard when its tar fails verification (then the shard fails).
        progress: receives per-shard and total byte progress.
        check_space: compare free disk space with the expected size first.
        fetcher: download function with the signature of ``edgesam_core.download.fetch``.
        session: optional ``requests.Session`` for HEAD and GET requests.

    Returns:
        A :class:`DownloadReport`.

    Raises:
        InputError: no or bad links file while downloads are needed.
        DownloadError: not enough disk space, or some shards failed (the others are kept and recorded).
    """
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    shutil.rmtree(out / _STAGING, ignore_errors=True)  # leftovers of an interrupted extraction
    manifest = load_manifest(out)
    report = DownloadReport(out=out)
    pending = []
    for shard in shards:
        if shard.name in manifest["shards"]:
            report.skipped.append(shard.name)
        else:
            pending.append(shard)
    if report.skipped:
        progress.log(f"{len(report.skipped)} shard(s) already in {out / MANIFEST_NAME}; skipping them")
    if not pending:
        report.seconds = time.monotonic() - started
        return report

    tars = out / "tars"
    tars.mkdir(exist_ok=True)
    need_download = [s for s in pending if not (tars / s.tar_name).is_file()]
    if need_download and links_file is None:
        raise InputError(f"Downloading {len(need_download)} SA-1B shard(s) needs --links FILE: the links "
                         f"text file from {META_DOWNLOAD_PAGE} (accept the licence, then 'Download text file')")
    links = read_links_file(links_file) if links_file is not None else {}
    attach_sources(need_download, links)  # raises, naming every shard the links file lacks
    # Shards whose tar is already here get a source too, so a corrupt leftover can be fetched again.
    pending = [Shard(s.name, s.split, links.get(s.name)) for s in pending]
    sizes = {s.name: (remote_size(s.source, session) if s.source else None) for s in pending}
    if check_space:
        check_free_space(out, [sizes[s.name] if s.source else 0 for s in pending], jobs, keep_tars)

    lock = threading.Lock()
    known = [sizes[s.name] for s in pending if s.source]
    total_task = progress.add_task(f"SA-1B ({len(pending)} shards)",
                                   total=sum(known) if known and None not in known else None)
    tee = _TotalProgress(progress, total_task, lock)
    fetch = fetcher or _default_fetcher()
    failures: dict[str, str] = {}

    def work(shard: Shard) -> None:
        try:
            entry = _process_shard(shard, out, sizes.get(shard.name), attempts, keep_tars, fetch, tee, session)
        except EdgeSamError as exc:
            with lock:
                failures[shard.name] = str(exc)
            progress.log(f"{shard.name} failed: {exc}")
            return
        with lock:
            manifest["shards"][shard.name] = entry
            _write_manifest(out, manifest)
            report.finished.append(shard.name)
            report.images += entry["images"]
        progress.log(f"{shard.name}: {entry['images']} images -> images/{shard.split}/")

    try:
        _run_parallel(work, pending, jobs)
    finally:
        progress.finish(total_task)
    shutil.rmtree(out / _STAGING, ignore_errors=True)
    report.bytes_downloaded = int(tee.received)
    report.seconds = time.monotonic() - started
    if failures:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(failures.items())[:3])
        expired = any("HTTP 403" in why or "HTTP 410" in why for why in failures.values())
        hint = f"; the signed links expire, get a fresh links file from {META_DOWNLOAD_PAGE}" if expired else ""
        raise DownloadError(f"{len(failures)} of {len(pending)} shard(s) failed ({listed}); the "
                            f"{len(report.finished)} finished ones are recorded, run the command again to retry"
                            f"{hint}")
    return report


def _process_shard(shard: Shard, out: Path, size: int | None, attempts: int, keep_tars: bool,
                   fetch: Callable[..., Path], progress: _TotalProgress, session) -> dict:
    """Download (unless a tar is already there), verify+extract, retrying a bad tar ``attempts`` times."""
    tar = out / "tars" / shard.tar_name
    last_error = ""
    for attempt in range(1, max(attempts, 1) + 1):
        if not tar.is_file():
            if shard.source is None:
                raise InputError(f"{shard.name} needs a source; pass --links")
            kwargs = {"expected_size": size, "progress": progress, "description": shard.name}
            if session is not None:
                kwargs["session"] = session
            fetch(shard.source, tar, **kwargs)
        try:
            result = extract_shard(tar, out / "images" / shard.split, out / "annotations" / shard.split,
                                   out / _STAGING, expected_size=size if shard.source else None,
                                   progress=progress.inner, description=f"{shard.name} verify+extract")
        except DatasetError as exc:
            last_error = str(exc)
            progress.log(f"{shard.name}: attempt {attempt}/{attempts} failed verification: {exc}")
            tar.unlink(missing_ok=True)
            tar.with_name(tar.name + ".part").unlink(missing_ok=True)
            if shard.source is None:
                raise DownloadError(f"{shard.name}: the tar left in {tar.parent} was corrupt and no links file "
                                    "entry can fetch it again; pass --links") from exc
            continue
        if result.images == 0:
            progress.log(f"{shard.name}: the tar held no .jpg files")
        if result.skipped_count:
            progress.log(f"{shard.name}: skipped {result.skipped_count} unsafe or unexpected member(s), "
                         f"e.g. {result.skipped[0]!r}")
        if not keep_tars:
            tar.unlink(missing_ok=True)
        return {"split": shard.split, "bytes": result.size, "sha256": result.sha256, "images": result.images,
                "annotations": result.annotations, "skipped_members": result.skipped_count,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    raise DownloadError(f"{shard.name} failed verification {attempts} time(s) ({last_error})")


def _run_parallel(work: Callable[[Shard], None], shards: list[Shard], jobs: int) -> None:
    """Run ``work`` over ``shards`` on ``jobs`` daemon threads.

    Daemon threads (not ``concurrent.futures``, whose threads are joined at exit) let Ctrl-C end the
    process at once; partial downloads stay as ``.part`` files and finished shards are already recorded.
    """
    todo: queue.Queue[Shard] = queue.Queue()
    for shard in shards:
        todo.put(shard)
    errors: list[BaseException] = []

    def loop() -> None:
        while True:
            try:
                shard = todo.get_nowait()
            except queue.Empty:
                return
            try:
                work(shard)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)
                return

    count = max(1, min(jobs, len(shards)))
    threads = [threading.Thread(target=loop, daemon=True, name=f"sa1b-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.2)  # short waits keep the main thread responsive to Ctrl-C
    if errors:
        raise errors[0]
