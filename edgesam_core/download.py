"""Resumable, verified file downloads (HTTP(S), Google Drive, ``file://`` and local paths).

``fetch`` streams into ``<dest>.part``, resumes it with an HTTP ``Range`` request, retries transient
failures with exponential backoff, checks size and SHA-256, optionally runs a caller's verification and
only then renames the file into place, so ``dest`` never holds a partial or unverified file.
This module is torch-free; it reports progress in bytes through :class:`edgesam_core.progress.Progress`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import DownloadError
from .progress import NullProgress, Progress

if TYPE_CHECKING:
    import requests

# Google Drive serves file bytes from this host; tests and mirrors point it elsewhere.
GOOGLE_DRIVE_ENV = "EDGESAM_GDRIVE_URL"
GOOGLE_DRIVE_BASE = "https://drive.usercontent.google.com"

_HTML_LIMIT = 2 << 20  # never read more than this much of an unexpected HTML page
_MAX_BACKOFF = 30.0


class _Transient(Exception):
    """A failure worth retrying (connection drop, 5xx, 429, short read)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def part_path(dest: str | Path) -> Path:
    """Where ``fetch`` keeps the incomplete download of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def google_drive_url(file_id: str) -> str:
    """Direct-download URL of a Google Drive file id (base overridable with ``$EDGESAM_GDRIVE_URL``)."""
    base = os.environ.get(GOOGLE_DRIVE_ENV, GOOGLE_DRIVE_BASE).rstrip("/")
    return f"{base}/download?" + urllib.parse.urlencode({"id": file_id, "export": "download"})


def resolve_google_drive(file_id: str, session: requests.Session | None = None, timeout: float = 30) -> str:
    """Return a URL that serves the bytes of a Drive file, following the large-file warning page.

    Files too large for Drive's virus scan answer with an HTML page whose form (hidden ``confirm`` and
    ``uuid`` inputs) leads to the real download; this function submits that form's URL.

    Raises:
        DownloadError: the request fails or the page holds no download form (file private or removed).
    """
    import requests

    session = session or _new_session()
    url = google_drive_url(file_id)
    try:
        with session.get(url, stream=True, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise DownloadError(f"Google Drive file {file_id} is not available (HTTP {resp.status_code}); "
                                    "check the file id or download it in a browser")
            if not _is_html(resp):
                return url
            page = _read_limited(resp)
            target = _confirmation_url(page, resp.url, session)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach Google Drive for file {file_id}: {_reason(exc)}; "
                            "check your connection") from exc
    if target is None:
        raise DownloadError(f"Google Drive returned a page without a download link for file {file_id} "
                            "(private, removed or over quota); download it in a browser instead")
    return target


def fetch(
    url: str | Path,
    dest: str | Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    description: str | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
    session: requests.Session | None = None,
    chunk_size: int = 1 << 20,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming and retrying, and verify the result.

    Args:
        url: ``http(s)://`` URL, ``file://`` URL or local path (copied with progress).
        dest: final file path; its folder is created. Work happens in ``<dest>.part``.
        expected_size: bytes the file must have (also checked against the server's length).
        sha256: hex digest the file must have.
        progress: receives one task advanced in bytes.
        description: label of the progress task (default: the file name).
        retries: attempts in a row without progress before giving up (>= 1).
        backoff: first retry delay in seconds; doubles each time (capped at 30 s).
        timeout: connect/read timeout in seconds.
        session: a ``requests.Session`` to reuse (cookies, proxies, adapters).
        chunk_size: bytes per read.
        verify: called with the completed ``.part`` file before it is renamed; raising rejects it.

    Returns:
        ``dest``.

    Raises:
        DownloadError: the download failed after ``retries`` attempts, the server refused it, or the
            file did not verify (the partial file is then removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    label = description or dest.name
    part = part_path(dest)
    source = str(url)
    local = _local_source(source)
    if local is not None:
        _copy_local(local, part, progress, label, chunk_size)
    else:
        _download(source, part, expected_size=expected_size, progress=progress, label=label,
                  retries=max(1, retries), backoff=backoff, timeout=timeout,
                  session=session or _new_session(), chunk_size=chunk_size)
    try:
        _check_file(part, source, expected_size, sha256)
        if verify is not None:
            verify(part)
    except Exception:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


# -- internals -----------------------------------------------------------------------------------

def _new_session() -> requests.Session:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = f"edgesam/{__version__}"
    return session


def _local_source(source: str) -> Path | None:
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path))
    if scheme in ("http", "https"):
        return None
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        return Path(source)
    raise DownloadError(f"unsupported URL scheme '{scheme}' in {source}; use http(s)://, file:// or a path")


def _copy_local(src: Path, part: Path, progress: Progress, label: str, chunk_size: int) -> None:
    if not src.is_file():
        raise DownloadError(f"source file {src} does not exist; check the path")
    total = src.stat().st_size
    task = progress.add_task(label, total=total)
    with open(src, "rb") as fin, open(part, "wb") as fout:
        for block in iter(lambda: fin.read(chunk_size), b""):
            fout.write(block)
            progress.advance(task, len(block))
    shutil.copystat(src, part)
    progress.finish(task)


def _check_file(part: Path, source: str, expected_size: int | None, sha256: str | None) -> None:
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"download of {source} has {size} bytes, expected {expected_size}; "
                            "the file is incomplete or changed upstream (removed it, run again)")
    if sha256:
        actual = sha256_of(part)
        if actual.lower() != sha256.lower():
            raise DownloadError(f"download of {source} failed its SHA-256 check (got {actual[:12]}…, "
                                f"expected {sha256[:12]}…); the file is corrupt (removed it, run again)")


def _download(url: str, part: Path, *, expected_size: int | None, progress: Progress, label: str,
              retries: int, backoff: float, timeout: float, session: requests.Session,
              chunk_size: int) -> None:
    import requests

    task = progress.add_task(label, total=expected_size)
    failures = 0
    furthest = part.stat().st_size if part.exists() else 0
    html_hops = 0
    restarts = 0
    last_error = "unknown error"
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if expected_size is not None and offset > expected_size:
            part.unlink()  # a stale partial file from something else
            offset = 0
        progress.update(task, completed=offset)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        received = 0
        try:
            with session.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as resp:
                outcome = _handle_response(resp, url, part, offset, expected_size)
                if outcome == "complete":
                    break
                if outcome == "restart":
                    restarts += 1
                    if restarts > 3:
                        raise DownloadError(f"download of {url} keeps restarting; the server's file "
                                            "changes between requests, try again later")
                    continue
                if outcome.startswith("html:"):
                    html_hops += 1
                    if html_hops > 3:
                        raise DownloadError(f"download of {url} keeps returning HTML pages instead of the file; "
                                            "download it in a browser and pass the file instead")
                    url = outcome[5:]
                    continue
                if resp.status_code != 206:
                    offset = 0  # the server ignored Range: start again from byte 0
                total = _total_size(resp, offset if resp.status_code == 206 else 0)
                if total is not None:
                    progress.update(task, total=total, completed=offset)
                mode = "ab" if resp.status_code == 206 else "wb"
                if mode == "wb":
                    progress.update(task, completed=0)
                with open(part, mode) as fh:
                    for block in resp.iter_content(chunk_size):
                        fh.write(block)
                        received += len(block)
                        progress.advance(task, len(block))
                have = offset + received
                if total is not None and have < total:
                    raise _Transient(f"connection closed after {have} of {total} bytes")
                break
        except (_Transient, requests.RequestException) as exc:
            last_error = _reason(exc)
            # A try that got further than ever before resets the count: slow but steady links finish.
            reached = offset + received
            failures = 1 if reached > furthest else failures + 1
            furthest = max(furthest, reached)
            if failures >= retries:
                progress.finish(task)
                attempts = "1 attempt" if retries == 1 else f"{retries} attempts"
                raise DownloadError(f"download of {url} failed after {attempts}: {last_error}; "
                                    "check the URL or your connection (run again to resume)") from exc
            delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF)
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                delay = min(max(delay, exc.retry_after), 60.0)
            progress.log(f"{label}: {last_error}; retrying in {delay:.1f}s")
            time.sleep(delay)
    progress.finish(task)


def _handle_response(resp: requests.Response, url: str, part: Path, offset: int,
                     expected_size: int | None) -> str:
    """Classify a response: 'stream', 'complete', 'restart' or 'html:<next url>'; raise on errors."""
    status = resp.status_code
    if status == 416:
        # Range not satisfiable: the part may already hold the whole file.
        total = _content_range_total(resp.headers.get("Content-Range", ""))
        target = total if total is not None else expected_size
        if offset and target == offset:
            return "complete"
        part.unlink(missing_ok=True)
        return "restart"
    if status == 429 or status >= 500:
        retry_after = resp.headers.get("Retry-After", "")
        raise _Transient(f"HTTP {status} {resp.reason}",
                         retry_after=float(retry_after) if retry_after.isdigit() else None)
    if status >= 400:
        raise DownloadError(f"download of {url} failed: HTTP {status} {resp.reason}; "
                            "check the URL (the file may have moved)")
    if _is_html(resp):
        page = _read_limited(resp)
        target = _confirmation_url(page, resp.url, None)
        if target is None:
            raise DownloadError(f"{url} returned an HTML page instead of the file; "
                                "the link may need a login or have expired")
        part.unlink(missing_ok=True)
        return "html:" + target
    if status == 206:
        start = _content_range_start(resp.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink(missing_ok=True)
            return "restart"
    total = _total_size(resp, offset if status == 206 else 0)
    if expected_size is not None and total is not None and total != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url} serves {total} bytes but {expected_size} were expected; "
                            "the file changed upstream or the URL is wrong")
    return "stream"


def _total_size(resp: requests.Response, offset: int) -> int | None:
    if resp.status_code == 206:
        total = _content_range_total(resp.headers.get("Content-Range", ""))
        if total is not None:
            return total
    length = resp.headers.get("Content-Length")
    # Content-Length is meaningless when requests transparently decompresses the body.
    if length is None or not length.isdigit() or resp.headers.get("Content-Encoding", "identity") != "identity":
        return None
    return offset + int(length)


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", value)
    return int(match.group(1)) if match else None


def _content_range_start(value: str) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value)
    return int(match.group(1)) if match else None


def _is_html(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _read_limited(resp: requests.Response) -> str:
    data = b""
    for block in resp.iter_content(64 << 10):
        data += block
        if len(data) >= _HTML_LIMIT:
            break
    return data.decode(resp.encoding or "utf-8", errors="replace")


class _FormParser(HTMLParser):
    """Collects each ``<form>``'s action and hidden inputs, and every link href."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self._current: tuple[str, dict[str, str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._current = (named.get("action", ""), {})
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and named.get("name"):
            if named.get("type", "text").lower() == "hidden":
                self._current[1][named["name"]] = named.get("value", "")
        elif tag == "a" and named.get("href"):
            self.links.append(named["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _confirmation_url(page: str, page_url: str, session: requests.Session | None) -> str | None:
    """The download URL behind a Drive warning page, or None if the page is not one."""
    parser = _FormParser()
    parser.feed(page)
    for action, fields in parser.forms:
        if "confirm" in fields or "uuid" in fields:
            target = urllib.parse.urljoin(page_url, action or page_url)
            return target.split("?")[0] + "?" + urllib.parse.urlencode(fields)
    # Older pages: a link carrying the confirm token, or the token in a cookie.
    for href in parser.links:
        if "confirm=" in href and "export=download" in href:
            return urllib.parse.urljoin(page_url, href)
    if session is not None:
        for cookie in session.cookies:
            if cookie.name.startswith("download_warning") and cookie.value:
                sep = "&" if "?" in page_url else "?"
                return f"{page_url}{sep}confirm={urllib.parse.quote(cookie.value)}"
    return None


def _reason(exc: BaseException) -> str:
    """A short, single-line reason for a network error."""
    import requests

    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "cannot connect to the server"
    if isinstance(exc, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection dropped mid-transfer"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
