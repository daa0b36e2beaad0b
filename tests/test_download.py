"""edgesam_core.download: resume, retries, verification, Drive confirmation pages, local sources."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from edgesam_core.download import fetch, google_drive_url, part_path, resolve_google_drive
from edgesam_core.errors import DownloadError
from tests.helpers.httpserver import FileServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class RecordingProgress:
    """A Progress that remembers totals and the bytes it was advanced by."""

    def __init__(self) -> None:
        self.totals: list[float | None] = []
        self.advanced = 0.0
        self.logs: list[str] = []

    def add_task(self, description: str, total: float | None = None) -> int:
        self.totals.append(total)
        return len(self.totals)

    def advance(self, task_id: int, amount: float = 1.0) -> None:
        self.advanced += amount

    def update(self, task_id: int, *, completed=None, total=None, description=None) -> None:
        if total is not None:
            self.totals.append(total)

    def finish(self, task_id: int) -> None:
        return None

    def log(self, message: str) -> None:
        self.logs.append(message)


@pytest.fixture
def server():
    with FileServer({"/w.bin": DATA}) as srv:
        yield srv


def test_full_download_verifies_size_and_sha(server, tmp_path):
    progress = RecordingProgress()
    dest = fetch(server.url("/w.bin"), tmp_path / "w.bin", expected_size=len(DATA), sha256=SHA,
                 progress=progress, chunk_size=65536)
    assert dest.read_bytes() == DATA
    assert not part_path(dest).exists()
    assert progress.advanced == len(DATA)
    assert len(DATA) in progress.totals


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_after = 100_000
    dest = fetch(server.url("/w.bin"), tmp_path / "w.bin", sha256=SHA, backoff=0, chunk_size=4096)
    assert dest.read_bytes() == DATA
    assert server.hits("/w.bin") == 2
    (resumed,) = server.range_requests("/w.bin")
    # The resume starts where the written prefix ends (a read buffer may drop the last partial chunk).
    assert resumed.startswith("bytes=") and 90_000 <= int(resumed[6:-1]) <= 100_000
    assert server.requests[-1].status == 206


def test_existing_part_file_is_resumed(server, tmp_path):
    dest = tmp_path / "w.bin"
    part_path(dest).write_bytes(DATA[:123_456])
    fetch(server.url("/w.bin"), dest, expected_size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA
    assert server.range_requests("/w.bin") == ["bytes=123456-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "w.bin"
    part_path(dest).write_bytes(b"X" * 5000)  # junk that a resume would wrongly keep
    fetch(server.url("/w.bin"), dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert server.requests[-1].status == 200


def test_complete_part_file_answered_416_is_accepted(server, tmp_path):
    dest = tmp_path / "w.bin"
    part_path(dest).write_bytes(DATA)
    fetch(server.url("/w.bin"), dest, expected_size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA
    assert server.requests[-1].status == 416


def test_transient_5xx_and_429_are_retried(server, tmp_path):
    server.fail_next = 2
    progress = RecordingProgress()
    fetch(server.url("/w.bin"), tmp_path / "w.bin", sha256=SHA, backoff=0, progress=progress)
    assert server.hits("/w.bin") == 3
    assert len(progress.logs) == 2 and "HTTP 503" in progress.logs[0]
    server.fail_next, server.fail_status = 1, 429
    fetch(server.url("/w.bin"), tmp_path / "again.bin", backoff=0)
    assert (tmp_path / "again.bin").read_bytes() == DATA


def test_gives_up_after_retries_with_one_line_message(server, tmp_path):
    server.fail_next = 10
    with pytest.raises(DownloadError) as info:
        fetch(server.url("/w.bin"), tmp_path / "w.bin", retries=3, backoff=0)
    message = str(info.value)
    assert "failed after 3 attempts" in message and "HTTP 503" in message and "\n" not in message
    assert server.hits("/w.bin") == 3
    assert not (tmp_path / "w.bin").exists()


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing.bin"), tmp_path / "m.bin", retries=5, backoff=0)
    assert server.hits("/missing.bin") == 1


@pytest.mark.parametrize("kind", ["sha256", "size"])
def test_corrupt_download_is_rejected_and_nothing_is_left(server, tmp_path, kind):
    dest = tmp_path / "w.bin"
    if kind == "sha256":
        server.files["/w.bin"] = DATA[:-1] + bytes([DATA[-1] ^ 1])
        with pytest.raises(DownloadError, match="SHA-256"):
            fetch(server.url("/w.bin"), dest, sha256=SHA)
    else:
        with pytest.raises(DownloadError, match=f"serves {len(DATA)} bytes but {len(DATA) + 1}"):
            fetch(server.url("/w.bin"), dest, expected_size=len(DATA) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_verify_callback_rejects_before_rename(server, tmp_path):
    dest = tmp_path / "w.bin"

    def reject(path):
        assert path == part_path(dest) and path.read_bytes() == DATA
        raise DownloadError("not a checkpoint")

    with pytest.raises(DownloadError, match="not a checkpoint"):
        fetch(server.url("/w.bin"), dest, verify=reject)
    assert list(tmp_path.iterdir()) == []


def test_google_drive_confirmation_page_is_followed(tmp_path, monkeypatch):
    with FileServer(drive_files={"FILEID": DATA}) as srv:
        monkeypatch.setenv("EDGESAM_GDRIVE_URL", srv.base_url)
        url = google_drive_url("FILEID")
        dest = fetch(url, tmp_path / "d.bin", sha256=SHA)
        assert dest.read_bytes() == DATA
        confirmed = [r for r in srv.requests if r.path == "/download"]
        assert len(confirmed) == 2 and confirmed[1].query["confirm"] == "t"
        assert confirmed[1].query["uuid"] == srv.drive_uuid
        resolved = resolve_google_drive("FILEID")
        assert "uuid=" in resolved and resolved.startswith(srv.base_url + "/download?")


def test_html_page_without_form_is_an_error(tmp_path):
    with FileServer({"/page": b"<html><body>Sign in</body></html>"}, content_type="text/html") as srv:
        with pytest.raises(DownloadError, match="HTML page instead of the file"):
            fetch(srv.url("/page"), tmp_path / "p.bin")
    assert not (tmp_path / "p.bin").exists()


def test_unreachable_server_message(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="failed after 2 attempts: cannot connect to the server"):
        fetch(f"http://127.0.0.1:{port}/w.bin", tmp_path / "w.bin", retries=2, backoff=0, timeout=2)


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    progress = RecordingProgress()
    out1 = fetch(src, tmp_path / "a" / "copy1.bin", sha256=SHA, progress=progress)
    out2 = fetch(src.as_uri(), tmp_path / "copy2.bin", expected_size=len(DATA))
    assert out1.read_bytes() == DATA and out2.read_bytes() == DATA
    assert progress.advanced == len(DATA)
    with pytest.raises(DownloadError, match="does not exist"):
        fetch(tmp_path / "nope.bin", tmp_path / "x.bin")
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://example.com/x", tmp_path / "x.bin")
