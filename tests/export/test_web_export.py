"""``export-web`` without a browser: the pinned npm package (fetch, integrity, cache, extraction), the site
folder and its manifest, and the static server's headers and refusals. The page itself is driven in headless
Chromium by ``tests/demo/test_web_site_browser.py``; its maths by ``test_web_page_math.py``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesam_core.errors import InputError
from edgesam_core.export.npm_package import NpmPackage, ensure_package, extract_files, integrity_of
from edgesam_core.export.web_export import ORT_FILES, PAGE_FILES, WebExportOptions, export_web
from tests.helpers.httpserver import FileServer


def _tarball(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def _fake_ort() -> bytes:
    """A stand-in onnxruntime-web tarball with every file the site takes (and one that escapes, ignored)."""
    files = {f"package/dist/{f}": f"// {f}\n".encode() for b in ORT_FILES.values() for f in b}
    files["package/package.json"] = b'{"name": "onnxruntime-web", "version": "0.0.0-test"}'
    files["package/../../escaped.txt"] = b"must never be written"
    return _tarball(files)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_registry_download_is_verified_cached_and_reused(home, tmp_path, monkeypatch):
    data = _fake_ort()
    path = tmp_path / "x.tgz"
    path.write_bytes(data)
    package = NpmPackage("onnxruntime-web", "0.0.0-test", integrity_of(path))
    with FileServer({"/onnxruntime-web/-/onnxruntime-web-0.0.0-test.tgz": data}) as server:
        monkeypatch.setenv("EDGESAM_NPM_REGISTRY", server.base_url)
        first = ensure_package(package)
        assert first == home / "npm" / "onnxruntime-web-0.0.0-test.tgz" and first.read_bytes() == data
        assert ensure_package(package) == first
        assert server.hits("/onnxruntime-web/-/onnxruntime-web-0.0.0-test.tgz") == 1  # the second came from cache

        first.write_bytes(data[:-10] + b"0123456789")  # a damaged cache entry is fetched again
        assert ensure_package(package).read_bytes() == data
        assert server.hits("/onnxruntime-web/-/onnxruntime-web-0.0.0-test.tgz") == 2

        wrong = NpmPackage("onnxruntime-web", "0.0.0-test", "sha512-" + "A" * 86 + "==")
        first.unlink()
        with pytest.raises(InputError, match="not onnxruntime-web@0.0.0-test as published on the npm registry"):
            ensure_package(wrong)
        assert not any((home / "npm").iterdir()), "a file that failed the integrity check stays nowhere"


def test_extraction_takes_only_named_regular_files(tmp_path):
    tgz = tmp_path / "p.tgz"
    tgz.write_bytes(_fake_ort())
    out = tmp_path / "out"
    extract_files(tgz, {"package/dist/ort.wasm.min.mjs": out / "a.mjs"})
    assert [p.name for p in out.iterdir()] == ["a.mjs"] and not (tmp_path / "escaped.txt").exists()
    with pytest.raises(InputError, match="lacks package/dist/missing.wasm"):
        extract_files(tgz, {"package/dist/missing.wasm": out / "m.wasm"})
    linked = tmp_path / "l.tgz"
    linked.write_bytes(_tarball({}, symlink="package/dist/ort.wasm.min.mjs"))
    with pytest.raises(InputError, match="not a regular file"):
        extract_files(linked, {"package/dist/ort.wasm.min.mjs": out / "b.mjs"})
    assert not (out / "b.mjs").exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A site for a random-weight debug model, with the stand-in onnxruntime-web."""
    import torch

    from edgesam_core.export.npm_package import integrity_of as sri
    from edgesam_core.models import build_sam

    root = tmp_path_factory.mktemp("web")
    torch.manual_seed(0)
    torch.save(build_sam("edge_sam_dyt_debug").state_dict(), root / "tiny.pth")
    tgz = root / "ort.tgz"
    tgz.write_bytes(_fake_ort())
    opts = WebExportOptions(model_type="edge_sam_dyt_debug", ort_source=tgz,
                            package=NpmPackage("onnxruntime-web", "0.0.0-test", sri(tgz)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESAM_HOME", str(root / "home"))
        export_web(root / "tiny.pth", root / "site", opts)
    return root, root / "site"


def test_site_holds_page_graphs_runtime_and_a_true_manifest(built):
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    root, site = built
    manifest = json.loads((site / "manifest.json").read_text())
    assert manifest["model"] == "edge_sam_dyt_debug" and manifest["img_size"] == 128 and not manifest["is_hq"]
    assert set(manifest["graphs"]) == {"encoder", "decoder_image", "decoder_prompts"}
    assert manifest["ort_web"]["version"] == "0.0.0-test" and manifest["parity"]["passed"]
    for name in PAGE_FILES:
        assert (site / name).read_bytes() == (Path(__file__).parents[2] / "edgesam_core/export/web_page" /
                                              name).read_bytes()
    assert {f"ort/{f}" for b in ORT_FILES.values() for f in b} <= set(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((site / rel).read_bytes()).hexdigest() == digest, rel
    assert set(manifest["files"]) == {str(p.relative_to(site)) for p in site.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    assert "Cross-Origin-Embedder-Policy: require-corp" in (site / "_headers").read_text()
    assert not list(root.glob(".site.partial*"))
    # The model folder is an export-onnx pair: Python opens it as it is.
    predictor = OnnxSamPredictor(site / manifest["graphs"]["encoder"])
    predictor.set_image(np.full((40, 60, 3), 90, np.uint8))
    assert predictor.predict(point_coords=np.array([[30, 20]]), point_labels=np.array([1])).masks.shape == (3, 40, 60)


def test_an_existing_site_is_never_written_over(built, tmp_path):
    root, site = built
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="not empty"):
        export_web(root / "tiny.pth", site, WebExportOptions(model_type="edge_sam_dyt_debug"))
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="--calib"):
        export_web(root / "tiny.pth", tmp_path / "new", WebExportOptions(model_type="edge_sam_dyt_debug", int8=True))
    assert not (tmp_path / "new").exists()


def _get(url: str, host: str | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_site_server_sends_isolation_headers_and_types_and_nothing_else(built):
    from edgesam_core.demo.site_server import serve_site

    _, site = built
    with serve_site(site, port=0) as server:
        status, headers, body = _get(server.url)
        assert status == 200 and body == (site / "index.html").read_bytes()
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Content-Type"].startswith("text/html")
        for path, kind in (("web-app.mjs", "text/javascript"), ("ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
                           ("manifest.json", "application/json")):
            status, headers, _ = _get(server.url + path)
            assert status == 200 and headers["Content-Type"].startswith(kind), (path, headers["Content-Type"])
        assert _get(server.url + "model/")[0] == 404  # no listings
        assert _get(server.url + "../tiny.pth")[0] == 404
        assert _get(server.url + "%2e%2e/tiny.pth")[0] == 404
        assert _get(server.url, host="evil.example")[0] == 421  # DNS rebinding
        assert "/web-app.mjs" in server.requests


def test_site_server_refuses_a_folder_that_is_not_a_site(tmp_path):
    from edgesam_core.demo.site_server import serve_site

    with pytest.raises(InputError, match="export-web"):
        serve_site(tmp_path, port=0)
    (tmp_path / "manifest.json").write_text('{"format": 99}')
    with pytest.raises(InputError, match="format 99"):
        serve_site(tmp_path, port=0)


def test_int8_site_ships_the_int8_encoder_with_the_fp32_decoder(built, tmp_path, monkeypatch):
    from PIL import Image

    from edgesam_core.export.npm_package import integrity_of as sri

    root, _ = built
    monkeypatch.setenv("EDGESAM_HOME", str(root / "home"))
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60 + 7 * i, 80, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    tgz = root / "ort.tgz"
    opts = WebExportOptions(model_type="edge_sam_dyt_debug", int8=True, calib_dir=photos, min_iou=0.0,
                            ort_source=tgz, package=NpmPackage("onnxruntime-web", "0.0.0-test", sri(tgz)))
    result = export_web(root / "tiny.pth", tmp_path / "site", opts)
    manifest = result.manifest
    assert manifest["int8_encoder"] and manifest["graphs"]["encoder"].endswith("_int8_encoder.onnx")
    assert manifest["graphs"]["decoder_prompts"] == "model/tiny_decoder_prompts.onnx"  # fp32 decoder
    assert not list((tmp_path / "site" / "model").glob("*_int8_decoder*"))
    assert manifest["int8"]["embedding_cosine_mean"] > 0.99  # int8 embeddings close to fp32 on held-out photos
    assert manifest["int8"]["calib_images"] == 3
    encoder = tmp_path / "site" / manifest["graphs"]["encoder"]
    assert encoder.stat().st_size < (tmp_path / "site" / "model" / "tiny_encoder.onnx").stat().st_size
