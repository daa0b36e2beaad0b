"""Published-weights registry, cache and verified downloads (local HTTP server, no internet)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket

import pytest
import torch
from typer.testing import CliRunner

from edgesam_core.download import part_path
from edgesam_core.errors import ConfigError, DownloadError, UnknownVariantError
from edgesam_core.models.build import _build_sam
from edgesam_core.models.variants import list_variants, resolve_variant
from edgesam_core.weight_registry import REGISTRY, WeightsEntry, cache_dir, ensure_weights, get_entry, verify_weights
from tests.helpers.httpserver import FileServer


def _checkpoint_bytes(variant: str, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"model": _build_sam(resolve_variant(variant)).state_dict(), "epoch": 1}, buffer)
    return buffer.getvalue()


TINY = _checkpoint_bytes("edge_sam_dyt_debug")
TINY_SHA = hashlib.sha256(TINY).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGESAM_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server():
    with FileServer({"/tiny.pth": TINY}) as srv:
        yield srv


def _registry(url: str, **kw) -> dict[str, WeightsEntry]:
    fields = dict(name="tiny", variant="edge_sam_dyt_debug", filename="tiny.pth", description="test", url=url)
    fields.update(kw)
    return {"tiny": WeightsEntry(**fields)}


def test_download_verifies_and_second_call_uses_the_cache(server, home):
    registry = _registry(server.url("/tiny.pth"), size=len(TINY), sha256=TINY_SHA)
    path = ensure_weights("tiny", registry=registry)
    assert path == home / "weights" / "tiny.pth" == cache_dir() / "tiny.pth"
    assert path.read_bytes() == TINY and not part_path(path).exists()
    again = ensure_weights("tiny", registry=registry)
    assert again == path and server.hits("/tiny.pth") == 1  # nothing downloaded the second time
    ensure_weights("tiny", registry=registry, force=True)
    assert server.hits("/tiny.pth") == 2


def test_interrupted_download_resumes_byte_identical(server):
    server.cut_after = len(TINY) // 3
    path = ensure_weights("tiny", registry=_registry(server.url("/tiny.pth"), sha256=TINY_SHA), backoff=0,
                          chunk_size=8192)
    assert path.read_bytes() == TINY
    assert len(server.range_requests("/tiny.pth")) == 1 and server.requests[-1].status == 206


def test_server_ignoring_range_still_gives_identical_file(server, home):
    server.ignore_range = True
    part = part_path(home / "weights" / "tiny.pth")
    part.parent.mkdir(parents=True)
    part.write_bytes(TINY[:1000])
    path = ensure_weights("tiny", registry=_registry(server.url("/tiny.pth"), sha256=TINY_SHA))
    assert path.read_bytes() == TINY and server.requests[-1].status == 200


@pytest.mark.parametrize("defect", ["sha256", "size", "not_a_checkpoint", "wrong_variant"])
def test_corrupt_or_wrong_file_leaves_nothing_in_the_cache(server, home, defect):
    kw: dict = {}
    if defect == "sha256":
        kw["sha256"] = "0" * 64
        pattern = "SHA-256"
    elif defect == "size":
        kw["size"] = len(TINY) + 10
        pattern = "bytes but"
    elif defect == "not_a_checkpoint":
        server.files["/tiny.pth"] = b"<binary junk>" * 100
        pattern = "do not load as 'edge_sam_dyt_debug'.*truncated or not a PyTorch checkpoint"
    else:
        server.files["/tiny.pth"] = _checkpoint_bytes("edge_sam_dyt_hq_debug")
        pattern = "do not load as 'edge_sam_dyt_debug'.*42 unexpected keys.*HQ checkpoint"
    with pytest.raises(DownloadError, match=pattern) as info:
        ensure_weights("tiny", registry=_registry(server.url("/tiny.pth"), **kw))
    assert "\n" not in str(info.value)
    assert not (home / "weights" / "tiny.pth").exists()
    assert not part_path(home / "weights" / "tiny.pth").exists()


def test_google_drive_entry_follows_the_confirmation_page(monkeypatch):
    with FileServer(drive_files={"DRIVEID": TINY}) as srv:
        monkeypatch.setenv("EDGESAM_GDRIVE_URL", srv.base_url)
        registry = _registry(None, drive_id="DRIVEID")
        path = ensure_weights("tiny", registry=registry)
        assert path.read_bytes() == TINY
        assert [r.query.get("confirm") for r in srv.requests] == [None, "t"]


def test_offline_message_names_url_and_checkpoint_option():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.pth"
    with pytest.raises(DownloadError) as info:
        ensure_weights("tiny", registry=_registry(url), retries=1)
    message = str(info.value)
    assert url in message and "--checkpoint PATH" in message and "cannot connect" in message
    assert "\n" not in message


def test_registry_entries_are_consistent():
    variants = set(list_variants())
    for name, entry in REGISTRY.items():
        assert entry.name == name and entry.variant in variants
        assert (entry.url is None) != (entry.drive_id is None), name
        assert entry.url is None or entry.url.startswith("https://")
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    # Every real variant has default weights (what `edgesam segment` fetches without --checkpoint).
    for variant in list_variants(include_debug=False):
        assert get_entry(variant).variant == variant
    assert get_entry("edge_sam_dyt_frozen_mask").name == "edge_sam_dyt_step2"


def test_unknown_names():
    with pytest.raises(UnknownVariantError, match="Did you mean 'edge_sam_dyt'"):
        get_entry("edge_sam_dty")
    with pytest.raises(ConfigError, match="no published weights; pass --checkpoint"):
        get_entry("edge_sam_dyt_debug")


def test_verify_weights_for_encoder_and_imagenet_files(tmp_path):
    model = _build_sam(resolve_variant("edge_sam_dyt_debug"))
    encoder = model.image_encoder.state_dict()
    torch.save({"model": encoder}, tmp_path / "step1.pth")
    verify_weights(tmp_path / "step1.pth", WeightsEntry("s1", "edge_sam_dyt_debug", "s1.pth", "", url="x",
                                                        kind="encoder"))
    imagenet = {k: v for k, v in encoder.items() if k.startswith("features.")}
    imagenet["classifier.l.weight"] = torch.zeros(3, 3)
    torch.save({"model": imagenet}, tmp_path / "in.pth")
    verify_weights(tmp_path / "in.pth", WeightsEntry("r", "edge_sam_dyt_debug", "r.pth", "", url="x", kind="imagenet"))


def test_cli_download_from_mirror_and_list(tmp_path, monkeypatch, home):
    from edgesam_cli.main import app

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.manual_seed(0)
    torch.save(_build_sam(resolve_variant("edge_sam_dyt")).state_dict(), mirror / "edge_sam_dyt_step4.pth")
    monkeypatch.setenv("EDGESAM_WEIGHTS_MIRROR", str(mirror))
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "download", "edge_sam_dyt"])
    assert result.exit_code == 0, result.output
    cached = home / "weights" / "edge_sam_dyt_step4.pth"
    assert str(cached) in result.output and cached.read_bytes() == (mirror / "edge_sam_dyt_step4.pth").read_bytes()
    listed = runner.invoke(app, ["weights", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["edge_sam_dyt"]["cached"] == str(cached) and rows["vit_h"]["cached"] is None
    assert rows["vit_h"]["size"] == 2_564_550_879
    table = runner.invoke(app, ["weights", "list"])
    assert table.exit_code == 0 and "edge_sam_dyt_step1" in table.output


def test_cli_failure_is_one_line_with_exit_code_1(tmp_path, home):
    import os
    import subprocess
    import sys

    env = dict(os.environ, EDGESAM_HOME=str(home), EDGESAM_WEIGHTS_MIRROR=str(tmp_path / "empty-mirror"))
    proc = subprocess.run([sys.executable, "-m", "edgesam_cli", "weights", "download", "vit_b"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: cannot fetch the 'vit_b' weights")
    assert "--checkpoint PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert not (home / "weights" / "sam_vit_b_01ec64.pth").exists()
