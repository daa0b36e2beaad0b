"""Core ML conversion (needs the ``coreml`` extra). Conversion and the I/O contract are checked everywhere;
the numbers only on macOS, where Core ML runs."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

from tests.export.conftest import make_model

pytestmark = pytest.mark.coreml


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    pytest.importorskip("coremltools")
    from edgesam_core.export.coreml_export import CoremlOptions, export_coreml

    root = tmp_path_factory.mktemp("coreml")
    model = make_model("edge_sam_dyt_debug")
    result = export_coreml(None, None, CoremlOptions(out_dir=root, name="dbg"), model=model)
    return {"root": root, "model": model, "result": result}


def test_packages_match_the_onnx_contract(converted, tmp_path):
    """Names, order, dtypes and shapes of the Core ML specs equal the ONNX graphs' (the encoder; the contract
    decoder's image_embeddings / point_coords / point_labels and outputs), with the point count a range."""
    import onnx

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.sidecar import io_spec

    files = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=tmp_path, name="dbg",
                                                simplify=False), model=converted["model"]).files
    onnx_io = {role: io_spec(onnx.load(str(path))) for role, path in files.items()}
    result = converted["result"]
    coreml = {role: json.loads(path.read_text())["io"] for role, path in result.sidecars.items()}

    def fixed(t):
        return {"name": t["name"], "dtype": t["dtype"], "shape": [d if isinstance(d, int) else "N" for d in t["shape"]]}

    assert [fixed(t) for t in coreml["encoder"]["inputs"]] == [fixed(t) for t in onnx_io["encoder"]["inputs"]]
    assert [fixed(t) for t in coreml["encoder"]["outputs"]] == [fixed(t) for t in onnx_io["encoder"]["outputs"]]
    # The contract decoder's first three inputs (its point_valid/boxes_valid/boxes are packed into the points).
    expected_inputs = onnx_io["decoder"]["inputs"][:3]
    assert [fixed(t) for t in coreml["decoder"]["inputs"]] == [fixed(t) for t in expected_inputs]
    assert coreml["decoder"]["inputs"][1]["shape"] == [1, "1..16", 2]
    assert [t["name"] for t in coreml["decoder"]["outputs"]] == ["scores", "masks"]
    assert coreml["decoder"]["outputs"][1]["shape"] == [1, 4, 32, 32]
    assert all(t["dtype"] == "float32" for side in coreml.values() for t in side["inputs"] + side["outputs"])


def test_files_sidecars_and_weight_compression(converted, tmp_path):
    from edgesam_core.export.coreml_export import CoremlOptions, export_coreml

    result = converted["result"]
    for role, path in result.files.items():
        assert path.name == f"dbg_{role}_fp16.mlpackage" and (path / "Manifest.json").is_file()
        meta = json.loads(result.sidecars[role].read_text())
        assert meta["pair"] == {"encoder": "dbg_encoder_fp16.mlpackage", "decoder": "dbg_decoder_fp16.mlpackage"}
        assert meta["check"] == {"ran": False, "why": "Core ML predictions need macOS"}
    assert not [p for p in converted["root"].iterdir() if p.name.startswith(".")]  # no partial packages left
    w8 = export_coreml(None, None, CoremlOptions(out_dir=tmp_path, name="dbg", w8=True), model=converted["model"])

    def weights_bytes(package):
        return sum(f.stat().st_size for f in package.rglob("weight.bin"))

    assert weights_bytes(w8.files["encoder"]) < 0.7 * weights_bytes(result.files["encoder"])


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predictions need macOS")
def test_numbers_on_macos(converted):  # pragma: no cover - macOS only
    from edgesam_core.export.coreml_export import CoremlRunner
    from edgesam_core.export.onnx_export import check_parity

    report = check_parity(converted["model"], converted["result"].files, False, 1e-2, open_runner=CoremlRunner)
    assert report.passed, report.describe(report.worst)
    assert np.isfinite([e.max_abs for e in report.entries]).all()


def test_hq_packages_carry_the_three_features(tmp_path):
    pytest.importorskip("coremltools")
    from edgesam_core.export.coreml_export import CoremlOptions, export_coreml

    result = export_coreml(None, None, CoremlOptions(out_dir=tmp_path, name="hq"),
                           model=make_model("edge_sam_dyt_hq_debug"))
    features = [f"interm_embeddings_{i}" for i in range(3)]
    encoder = json.loads(result.sidecars["encoder"].read_text())["io"]
    decoder = json.loads(result.sidecars["decoder"].read_text())["io"]
    assert [t["name"] for t in encoder["outputs"]] == ["image_embeddings", *features]
    assert [t["name"] for t in decoder["inputs"]] == ["image_embeddings", "point_coords", "point_labels", *features]
    assert [t["shape"] for t in decoder["inputs"][3:]] == [t["shape"] for t in encoder["outputs"][1:]]
    assert decoder["outputs"][1]["shape"] == [1, 1, 32, 32]  # the HQ mask only
