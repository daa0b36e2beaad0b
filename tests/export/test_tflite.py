"""TFLite conversion end to end on the debug model (needs the ``tflite`` extra: tensorflow + onnx2tf).

One module-scoped conversion (fp32 + int8, ~45 s on 2 cores) feeds every test: parity against ONNX
Runtime, the int8 fidelity report, the sidecars, the predictor and ``load_predictor``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.perturb import perturb_prompt_path

pytestmark = pytest.mark.tflite


@pytest.fixture(scope="module", autouse=True)
def _tflite_stack():
    # Imported when a test of this module runs, not at collection: tensorflow loaded into a pytest-xdist
    # worker that then runs the torch training tests crashes that worker.
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import torch
    from PIL import Image

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.export.tflite import TfliteOptions, convert_tflite
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    model = perturb_prompt_path(build_sam("edge_sam_dyt_debug")).eval()
    root = tmp_path_factory.mktemp("tflite")
    onnx_files = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=root, name="dbg",
                                                     simplify=False, opset=17, runtime_rewrites=False),
                             model=model).files
    calib = root / "calib"
    calib.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_image(200 + 30 * i, 260, seed=10 + i)).save(calib / f"img{i}.png")
    options = TfliteOptions(precisions=("fp32", "int8"), num_points=3, calib_dir=calib)
    result = convert_tflite(onnx_files["decoder"], root / "out", options=options)
    return {"result": result, "onnx": onnx_files, "model": model}


def test_files_and_sidecars(converted):
    result = converted["result"]
    for precision in ("fp32", "int8"):
        for role in ("encoder", "decoder"):
            path = result.files[precision][role]
            assert path.name == f"dbg_{role}_{precision}.tflite" and path.stat().st_size > 1000
            meta = json.loads(result.sidecars[precision][role].read_text())
            assert meta["pair"] == {"encoder": f"dbg_encoder_{precision}.tflite",
                                    "decoder": f"dbg_decoder_{precision}.tflite"}
            assert meta["img_size"] == 128 and meta["parity"]["entries"]
    dec = json.loads(result.sidecars["fp32"]["decoder"].read_text())
    assert dec["num_points"] == 3
    assert [t["name"] for t in dec["io"]["inputs"]] == ["image_embeddings", "point_coords", "point_labels"]
    # onnx2tf moved the embedding to NHWC; the runner undoes it from this record.
    assert dec["io"]["inputs"][0]["layout"] == "nhwc" and dec["io"]["inputs"][0]["tflite_shape"] == [1, 8, 8, 32]
    enc = json.loads(result.sidecars["fp32"]["encoder"].read_text())
    assert enc["upsample_mode"] == "bilinear" and any("bicubic" in n for n in enc["notes"])
    assert not list((result.files["fp32"]["encoder"].parent).glob(".dbg_*"))  # scratch folders removed


def test_fp32_matches_onnxruntime(converted):
    report = converted["result"].parity["fp32"]
    assert report["gated"] and report["passed"]
    cases = {(e["graph"], e["case"]) for e in report["entries"]}
    decoder_cases = {c for g, c in cases if g == "decoder"}
    assert ("encoder", "synthetic") in cases and {"points", "box", "box+points"} <= decoder_cases
    # export-onnx's rule: bounded distance from the float64 model within 3x the export's recorded fp32 floor
    # plus 1e-5. The encoder's reference is the bilinear graph LiteRT can run and the padded decoder prompt is
    # another input than the record's: those entries measure the conversion alone, under the record's floor.
    assert "float64" in report["reference"] and report["tolerance"] == 1e-5
    for entry in report["entries"]:
        assert entry["floor_max"] > 0, entry
        if entry["graph"] == "decoder (prompt as given)":
            continue  # judged below, with padding's own measured effect allowed for
        # float32 kernels in a different runtime, same inputs: 1e-4 of the output scale.
        assert entry["max_abs"] <= 1e-4 * max(1.0, entry["ref_abs_max"]), entry
    # The user's prompt as given (no -1 padding): padding's effect is measured and written to the sidecar,
    # and the TFLite decoder lands within that effect plus fp32 noise of ONNX Runtime on the real prompt.
    padding = {(p["case"], p["output"]): p for p in report["padding"]}
    given = [e for e in report["entries"] if e["graph"] == "decoder (prompt as given)"]
    assert given and {(e["case"], e["output"]) for e in given} == set(padding)
    for entry in given:
        effect = padding[(entry["case"], entry["output"])]["max_abs_change"]
        assert entry["passed"] and entry["max_abs"] <= effect + 1e-4 * max(1.0, entry["ref_abs_max"]), entry
    sidecar = json.loads(converted["result"].sidecars["fp32"]["decoder"].read_text())
    assert sidecar["parity"]["padding"] == report["padding"]
    assert any("padded" in note for note in sidecar["notes"])


def test_int8_reports_fidelity(converted):
    result = converted["result"]
    report = result.parity["int8"]
    assert report["gated"] is False and report["passed"] is None
    encoder = [e for e in report["entries"] if e["graph"] == "encoder"][0]
    # Quantized, so not exact, yet clearly the same function (a broken calibration gives errors ~ scale).
    assert 0 < encoder["max_abs"] <= 0.25 * encoder["ref_abs_max"]
    assert encoder["mean_abs"] <= 0.05 * encoder["ref_abs_max"]
    for entry in report["entries"]:
        assert np.isfinite(entry["max_abs"])
    assert result.latency_ms["int8"]["encoder"] > 0 and result.latency_ms["fp32"]["decoder"] > 0


def test_predictor_agrees_with_onnx_predictor(converted):
    from edgesam_core.errors import InputError
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.inference.artifact_loader import load_predictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor
    from edgesam_core.inference.tflite_predictor import TfliteSamPredictor

    image = synthetic_image(150, 210, seed=5)
    ref = OnnxSamPredictor(converted["onnx"]["encoder"])
    tfl = load_predictor(converted["result"].files["fp32"]["decoder"])
    assert isinstance(tfl, TfliteSamPredictor) and tfl.num_points == 3 and tfl.img_size == 128
    ref.set_image(image)
    tfl.set_image(image)
    # The same function, step by step: ONNX Runtime's decoder fed the TFLite encoder's embedding (bilinear neck:
    # LiteRT has no bicubic kernel) and the same -1-padded prompt must give TFLite's logits to fp32 noise.
    from edgesam_core.export.runtime_pair import pack_static_prompts

    ort_decoder = ref.decoder
    ref.features = list(tfl.features)

    class PaddedLikeTflite:
        def run(self, names, feed):
            return ort_decoder.run(names, pack_static_prompts(feed, tfl.num_points))

        def __getattr__(self, name):
            return getattr(ort_decoder, name)

    ref.decoder = PaddedLikeTflite()
    box = np.array([30, 25, 150, 120])
    for kwargs in (dict(point_coords=np.array([[80, 60]]), point_labels=np.array([1])), dict(box=box),
                   dict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]), box=box)):
        a = ref.predict(**kwargs, return_logits=True)
        b = tfl.predict(**kwargs, return_logits=True)
        assert b.masks.shape == a.masks.shape == (3, 150, 210) and b.low_res_logits.shape == (3, 32, 32)
        scale = max(1.0, float(np.abs(a.low_res_logits).max()))
        assert np.abs(b.low_res_logits - a.low_res_logits).max() <= 1e-4 * scale
        assert np.abs(b.scores - a.scores).max() <= 1e-4 * max(1.0, float(np.abs(a.scores).max()))
    with pytest.raises(InputError, match="--num-points"):
        tfl.predict(point_coords=np.array([[1, 2], [3, 4]]), point_labels=np.array([1, 0]), box=box)


def test_cli_convert_json(converted, tmp_path):
    import typer.testing

    from edgesam_cli.main import app

    src = converted["onnx"]["encoder"]
    runner = typer.testing.CliRunner()
    res = runner.invoke(app, ["convert-tflite", str(src), "--out", str(tmp_path), "--name", "cli",
                              "--precision", "fp16", "--num-points", "2", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert set(payload["files"]["fp16"]) == {"encoder", "decoder"}
    assert payload["parity"]["fp16"]["passed"] is True
    assert (tmp_path / "cli_decoder_fp16.tflite.json").is_file()
