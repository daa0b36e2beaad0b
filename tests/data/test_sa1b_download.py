"""SA-1B shard download: layout, resume, Range-less servers, corrupt tars, hostile tars, idempotency."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from edgesam_core.data import sa1b_download
from edgesam_core.data.archive import extract_shard
from edgesam_core.data.sa1b_download import MANIFEST_NAME, download_sa1b
from edgesam_core.data.shards import Shard, normalize_shard_name, packaged_subset, read_links_file, select_shards
from edgesam_core.download import fetch
from edgesam_core.errors import DatasetError, DownloadError, InputError
from tests.helpers.httpserver import FileServer

TRAIN = [Shard("sa_000020", "train"), Shard("sa_000021", "train")]
VAL = [Shard("sa_000130", "val")]


@pytest.fixture()
def shards(tmp_path, fakes):
    """Three shard tars (2 train, 1 val) on disk with their member contents."""
    src = tmp_path / "src"
    src.mkdir()
    contents = {}
    for i, shard in enumerate(TRAIN + VAL):
        contents[shard.name] = fakes.build_shard(src / shard.tar_name, first_id=100 * i + 1, count=3)
    return src, contents


def _serve(src: Path) -> FileServer:
    return FileServer({f"/{p.name}": p.read_bytes() for p in src.glob("*.tar")})


def _links(tmp_path, fakes, srv: FileServer, names) -> Path:
    return fakes.write_links(tmp_path / "links.txt", {n: srv.url(f"/{n}.tar") for n in names})


def _check_layout(out: Path, contents: dict[str, dict[str, bytes]], split_of: dict[str, str]) -> None:
    for shard, members in contents.items():
        split = split_of[shard]
        for name, data in members.items():
            folder = "images" if name.endswith(".jpg") else "annotations"
            assert (out / folder / split / name).read_bytes() == data


def test_packaged_subset_is_k_5_percent():
    subset = packaged_subset()
    assert len(subset["train"]) == 50 and len(set(subset["train"])) == 50
    assert subset["val"] == ["sa_000130", "sa_000341", "sa_000342", "sa_000493", "sa_000494"]
    assert subset["train"][:10] == [f"sa_{i:06d}" for i in range(20, 30)]
    assert {"sa_000340", "sa_000343", "sa_000349", "sa_000492"} <= set(subset["train"])
    assert "sa_000341" not in subset["train"]


def test_select_shards_variants():
    assert [s.name for s in select_shards("train", count=3)] == ["sa_000020", "sa_000021", "sa_000022"]
    assert len(select_shards("all")) == 55
    assert [(s.name, s.split) for s in select_shards(names=["130", "sa_000021.tar"])] == [
        ("sa_000130", "val"), ("sa_000021", "train")]
    assert select_shards("val", names=["sa_000999"])[0].split == "val"
    with pytest.raises(InputError, match="--split train or --split val"):
        select_shards(names=["sa_000999"])
    with pytest.raises(InputError, match="not both"):
        select_shards(count=2, names=["sa_000020"])
    with pytest.raises(InputError, match="belongs to the val split"):
        select_shards("train", names=["sa_000130"])
    with pytest.raises(InputError, match="not an SA-1B shard name"):
        normalize_shard_name("shard20")


def test_full_download_extracts_layout_and_manifest(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    with _serve(src) as srv:
        links = _links(tmp_path, fakes, srv, contents)
        report = download_sa1b(out, TRAIN + VAL, links_file=links, jobs=2)
    assert sorted(report.finished) == sorted(contents) and report.images == 9
    _check_layout(out, contents, {s.name: s.split for s in TRAIN + VAL})
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entry = manifest["shards"]["sa_000130"]
    assert entry["split"] == "val" and entry["images"] == 3 and entry["annotations"] == 3
    assert entry["sha256"] == hashlib.sha256((src / "sa_000130.tar").read_bytes()).hexdigest()
    assert not list((out / "tars").iterdir()), "tars are deleted without --keep-tars"
    assert not (out / ".staging").exists()


def test_second_run_downloads_nothing(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    with _serve(src) as srv:
        links = _links(tmp_path, fakes, srv, contents)
        download_sa1b(out, TRAIN, links_file=links)
        before = len(srv.requests)
        report = download_sa1b(out, TRAIN, links_file=links)
        assert len(srv.requests) == before
    assert report.finished == [] and sorted(report.skipped) == ["sa_000020", "sa_000021"]
    # Finished shards need no links file at all.
    assert download_sa1b(out, TRAIN).skipped == ["sa_000020", "sa_000021"]


def test_interrupted_download_resumes_with_range(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    server = _serve(src)
    server.cut_after, server.cut_times = 5_000, 2
    with server as srv:
        links = _links(tmp_path, fakes, srv, ["sa_000020"])
        # Small chunks so the bytes before the cut reach the .part file (fetch reads 1 MB at a time).
        small_chunks = functools.partial(fetch, chunk_size=1000)
        download_sa1b(out, TRAIN[:1], links_file=links, keep_tars=True, fetcher=small_chunks)
        ranges = srv.range_requests("/sa_000020.tar")
    assert ranges and ranges[0] == "bytes=5000-"
    assert (out / "tars" / "sa_000020.tar").read_bytes() == (src / "sa_000020.tar").read_bytes()
    _check_layout(out, {"sa_000020": contents["sa_000020"]}, {"sa_000020": "train"})


def test_server_without_range_support(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    server = _serve(src)
    server.ignore_range, server.cut_after = True, 6_000
    with server as srv:
        links = _links(tmp_path, fakes, srv, ["sa_000021"])
        small_chunks = functools.partial(fetch, chunk_size=1000)
        # In a thread with a deadline: a client that mishandles 200-on-Range loops instead of failing.
        worker = threading.Thread(target=download_sa1b, args=(out, TRAIN[1:]), daemon=True,
                                  kwargs={"links_file": links, "keep_tars": True, "fetcher": small_chunks})
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "download did not finish after the server ignored Range"
        assert srv.range_requests("/sa_000021.tar"), "the retry asked for a range, which the server ignored"
        assert [r.status for r in srv.requests if r.method == "GET"] == [200, 200]
    assert (out / "tars" / "sa_000021.tar").read_bytes() == (src / "sa_000021.tar").read_bytes()


def test_corrupt_tar_is_detected_and_fetched_again(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    calls = []
    with tarfile.open(src / "sa_000020.tar") as t:
        header = t.getmembers()[1].offset

    def corrupting_fetch(url, dest, **kwargs):
        path = fetch(url, dest, **kwargs)
        calls.append(url)
        if len(calls) == 1:  # same size, garbage where the second member's header is
            data = bytearray(path.read_bytes())
            data[header:header + 512] = b"\x7f" * 512
            path.write_bytes(bytes(data))
        return path

    with _serve(src) as srv:
        links = _links(tmp_path, fakes, srv, ["sa_000020"])
        report = download_sa1b(out, TRAIN[:1], links_file=links, fetcher=corrupting_fetch)
        assert srv.hits("/sa_000020.tar") == 2
    assert report.finished == ["sa_000020"]
    _check_layout(out, {"sa_000020": contents["sa_000020"]}, {"sa_000020": "train"})


def test_always_corrupt_shard_fails_without_being_used(tmp_path, fakes, shards):
    src, contents = shards
    bad = (src / "sa_000021.tar").read_bytes()
    (src / "sa_000021.tar").write_bytes(bad[: len(bad) - 5000])  # truncated at the source
    out = tmp_path / "SA-1B"
    with _serve(src) as srv:
        links = _links(tmp_path, fakes, srv, ["sa_000020", "sa_000021"])
        with pytest.raises(DownloadError, match=r"1 of 2 shard\(s\) failed.*sa_000021"):
            download_sa1b(out, TRAIN, links_file=links, attempts=2)
        assert srv.hits("/sa_000021.tar") == 2
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert list(manifest["shards"]) == ["sa_000020"]
    names = {p.name for p in (out / "images" / "train").iterdir()}
    assert names == {n for n in contents["sa_000020"] if n.endswith(".jpg")}
    assert not (out / "tars" / "sa_000021.tar").exists()


def test_truncation_at_member_boundary_is_caught_without_known_size(tmp_path, fakes):
    tar = tmp_path / "sa_000001.tar"
    fakes.build_shard(tar, 1, 2)
    with tarfile.open(tar) as t:
        cut = t.getmembers()[2].offset  # right before the third member's header
    tar.write_bytes(tar.read_bytes()[:cut])
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="truncated"):
        extract_shard(tar, out / "images", out / "annotations", out / ".staging")
    assert not (out / "images").exists() or not list((out / "images").iterdir())


def test_hostile_members_never_leave_out(tmp_path, fakes):
    def info(name, kind=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, link
        return ti

    payload = b"evil"
    extra = []
    for name in ("../evil.jpg", "/tmp/abs_evil.jpg", "a/../../evil2.json", "ok/../../../evil3.jpg"):
        ti = info(name)
        ti.size = len(payload)
        extra.append((ti, payload))
    extra += [(info("link.jpg", tarfile.SYMTYPE, "/etc/passwd"), None),
              (info("hard.jpg", tarfile.LNKTYPE, "sa_1.jpg"), None),
              (info("dev.jpg", tarfile.CHRTYPE), None),
              (info("fifo.json", tarfile.FIFOTYPE), None)]
    ti = info("notes.txt")
    ti.size = len(payload)
    extra.append((ti, payload))
    work = tmp_path / "work"
    work.mkdir()
    tar = work / "sa_000007.tar"
    contents = fakes.build_shard(tar, 1, 2, extra=extra, prefix="./sub/")
    out = work / "OUT"
    before = {p for p in tmp_path.rglob("*")}
    result = extract_shard(tar, out / "images" / "train", out / "annotations" / "train", out / ".staging")
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(out) for p in created), sorted(map(str, created))
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert result.skipped_count == 9 and result.images == 2 and result.annotations == 2
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["sa_1.jpg", "sa_2.jpg"]
    assert (out / "images" / "train" / "sa_1.jpg").read_bytes() == contents["sa_1.jpg"]
    assert not Path("/tmp/abs_evil.jpg").exists()
    assert result.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest(), "skipped data is hashed too"


def test_links_file_errors(tmp_path, fakes):
    with pytest.raises(InputError, match="segment-anything-downloads"):
        read_links_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("sa_000020.tar\thttp://x/sa_000020.tar\n")
    with pytest.raises(InputError, match="header"):
        read_links_file(bad)
    bad.write_text("file_name\tcdn_link\nsa_000020.tar\n")
    with pytest.raises(InputError, match=r"bad.txt:2"):
        read_links_file(bad)
    bad.write_text("file_name\tcdn_link\nsa_000020.tar\thttp://a\nsa_000020.tar\thttp://b\n")
    with pytest.raises(InputError, match="twice"):
        read_links_file(bad)
    bad.write_text("file_name\tcdn_link\nsa_000020.tar\tftp://host/x.tar\n")
    with pytest.raises(InputError, match="scheme"):
        read_links_file(bad)
    links = fakes.write_links(tmp_path / "l.txt", {"sa_000020": "http://h/sa_000020.tar"})
    assert read_links_file(links) == {"sa_000020": "http://h/sa_000020.tar"}
    with pytest.raises(InputError, match="no entry for sa_000021"):
        download_sa1b(tmp_path / "o", TRAIN, links_file=links)
    with pytest.raises(InputError, match="needs --links"):
        download_sa1b(tmp_path / "o", TRAIN)


def test_file_urls_and_relative_paths(tmp_path, fakes, shards):
    src, contents = shards
    links = fakes.write_links(src / "links.txt", {"sa_000020": (src / "sa_000020.tar").as_uri(),
                                                  "sa_000130": "sa_000130.tar"})
    out = tmp_path / "SA-1B"
    report = download_sa1b(out, [TRAIN[0], VAL[0]], links_file=links)
    assert sorted(report.finished) == ["sa_000020", "sa_000130"]
    _check_layout(out, {k: contents[k] for k in ("sa_000020", "sa_000130")},
                  {"sa_000020": "train", "sa_000130": "val"})
    assert (src / "sa_000020.tar").exists(), "local sources are copied, never moved"


def test_leftover_tar_is_used_without_links(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    (out / "tars").mkdir(parents=True)
    shutil.copy(src / "sa_000020.tar", out / "tars")
    report = download_sa1b(out, TRAIN[:1], keep_tars=True)
    assert report.finished == ["sa_000020"] and (out / "tars" / "sa_000020.tar").exists()


def test_not_enough_disk_space(tmp_path, fakes, shards, monkeypatch):
    src, contents = shards
    links = fakes.write_links(tmp_path / "l.txt", {n: str(src / f"{n}.tar") for n in contents})
    usage = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(sa1b_download.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(DownloadError, match="Not enough free disk space"):
        download_sa1b(tmp_path / "o", TRAIN, links_file=links)
    assert not (tmp_path / "o" / "images").exists()


def test_total_progress_counts_every_byte(tmp_path, fakes, shards):
    src, contents = shards

    class Recorder:
        def __init__(self):
            self.advanced: dict[int, float] = {}
            self.totals: dict[int, float | None] = {}

        def add_task(self, description, total=None):
            self.totals[len(self.totals) + 1] = total
            return len(self.totals)

        def advance(self, task_id, amount=1.0):
            self.advanced[task_id] = self.advanced.get(task_id, 0.0) + amount

        def update(self, task_id, *, completed=None, total=None, description=None):
            if completed is not None:
                self.advanced[task_id] = completed

        def finish(self, task_id):
            return None

        def log(self, message):
            return None

    rec = Recorder()
    with _serve(src) as srv:
        links = _links(tmp_path, fakes, srv, contents)
        report = download_sa1b(tmp_path / "o", TRAIN + VAL, links_file=links, jobs=3, progress=rec)
    expected = sum((src / f"{n}.tar").stat().st_size for n in contents)
    assert rec.totals[1] == expected and rec.advanced[1] == expected
    assert report.bytes_downloaded == expected


def test_cli_downloads_with_file_links(tmp_path, fakes, shards):
    from typer.testing import CliRunner

    from edgesam_cli.main import app

    src, contents = shards
    links = fakes.write_links(tmp_path / "l.txt", {n: (src / f"{n}.tar").as_uri() for n in contents})
    out = tmp_path / "SA-1B"
    from typer.main import get_command

    # Typer runs a one-command app as that command; with several commands it is a group.
    sub = ["download-data"] if hasattr(get_command(app), "commands") else []
    runner = CliRunner()
    args = [*sub, "--links", str(links), "--names", "sa_000020,sa_000130", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 shard(s) downloaded" in result.output
    assert len(list((out / "images" / "val").glob("*.jpg"))) == 3
    missing = runner.invoke(app, [*sub, "--split", "val", "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0
    assert "needs --links" in str(missing.exception) + missing.output
    helptext = runner.invoke(app, [*sub, "--help"], env={"COLUMNS": "200"})
    assert helptext.exit_code == 0 and "--shards 10" in helptext.output
    assert "segment-anything-downloads" in helptext.output


def test_interrupt_keeps_finished_shards(tmp_path, fakes, shards):
    src, contents = shards
    links = fakes.write_links(tmp_path / "l.txt", {n: str(src / f"{n}.tar") for n in contents})
    out = tmp_path / "SA-1B"
    calls = []

    def interrupted_fetch(url, dest, **kwargs):
        calls.append(url)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fetch(url, dest, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        download_sa1b(out, TRAIN + VAL, links_file=links, jobs=1, fetcher=interrupted_fetch)
    assert list(json.loads((out / MANIFEST_NAME).read_text())["shards"]) == ["sa_000020"]
    report = download_sa1b(out, TRAIN + VAL, links_file=links)
    assert report.skipped == ["sa_000020"] and sorted(report.finished) == ["sa_000021", "sa_000130"]


def test_download_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, edgesam_core.data.sa1b_download, edgesam_core.data.shards, edgesam_core.data.archive\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_expired_link_names_the_fix(tmp_path, fakes, shards):
    src, contents = shards
    server = _serve(src)
    server.fail_next, server.fail_status = 10, 403  # what an expired signed CDN link answers
    with server as srv:
        links = _links(tmp_path, fakes, srv, ["sa_000020"])
        with pytest.raises(DownloadError, match="sa_000020.*HTTP 403.*fresh links file"):
            download_sa1b(tmp_path / "o", TRAIN[:1], links_file=links, check_space=False)


def test_corrupt_leftover_tar_is_replaced_from_links(tmp_path, fakes, shards):
    src, contents = shards
    out = tmp_path / "SA-1B"
    (out / "tars").mkdir(parents=True)
    (out / "tars" / "sa_000020.tar").write_bytes((src / "sa_000020.tar").read_bytes()[:3000])
    with pytest.raises(DownloadError, match="pass --links"):
        download_sa1b(out, TRAIN[:1])
    (out / "tars" / "sa_000020.tar").write_bytes((src / "sa_000020.tar").read_bytes()[:3000])
    links = fakes.write_links(tmp_path / "l.txt", {"sa_000020": str(src / "sa_000020.tar")})
    assert download_sa1b(out, TRAIN[:1], links_file=links).finished == ["sa_000020"]
    _check_layout(out, {"sa_000020": contents["sa_000020"]}, {"sa_000020": "train"})
