"""The web page's pre/post-processing (``sam-web.mjs``, run by Node.js) against the Python predictor's.

Resizing and normalisation must be bit-identical (the encoder then sees the same input in the browser as in
Python); mask upscaling matches torch's bilinear to float32 rounding; prompts, stability scores and COCO RLE
exactly. Real photo crops (matplotlib's sample data), sizes that shrink, enlarge and keep each side.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgesam_core.export.web_export import PAGE_DIR

NODE = shutil.which("node")
if NODE is None:
    if os.environ.get("EDGESAM_REQUIRE_BROWSER") == "1":
        pytest.fail("EDGESAM_REQUIRE_BROWSER=1 but Node.js is missing (apt-get install nodejs)", pytrace=False)
    pytest.skip("the web page's maths is checked with Node.js, which is not installed", allow_module_level=True)

# Reads {"calls": [{"fn", "args", "typed": {argIndex: [dtype, base64]}}]} on stdin, answers one result per call.
_RUNNER = """
import * as sam from %s;
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const spec = JSON.parse(Buffer.concat(chunks).toString());
const kinds = { u8: Uint8Array, f32: Float32Array };
const pack = (v) => {
  if (ArrayBuffer.isView(v)) return { typed: v.constructor.name, b64: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map(pack);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, pack(x)]));
  return Number.isNaN(v) ? "NaN" : v;
};
const out = spec.calls.map((call) => {
  const args = call.args.map((a, i) => {
    const t = call.typed && call.typed[i];
    if (!t) return a;
    const buf = Buffer.from(t[1], "base64");
    return new kinds[t[0]](buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  });
  return pack(sam[call.fn](...args));
});
process.stdout.write(JSON.stringify(out));
"""
_TYPED = {"Uint8Array": np.uint8, "Float32Array": np.float32, "Int32Array": np.int32}


def _js(calls: list[dict], tmp_path: Path) -> list:
    script = tmp_path / "run.mjs"
    script.write_text(_RUNNER % json.dumps((PAGE_DIR / "sam-web.mjs").resolve().as_uri()))
    done = subprocess.run([NODE, str(script)], input=json.dumps({"calls": calls}), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    def unpack(v):
        if isinstance(v, dict) and "typed" in v:
            return np.frombuffer(base64.b64decode(v["b64"]), _TYPED[v["typed"]])
        if isinstance(v, dict):
            return {k: unpack(x) for k, x in v.items()}
        if isinstance(v, list):
            return [unpack(x) for x in v]
        return float("nan") if v == "NaN" else v

    return unpack(json.loads(done.stdout))


def _typed(array: np.ndarray, kind: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


CROPS = [((0, 300, 0, 200), 64), ((100, 137, 50, 141), 256), ((0, 600, 0, 512), 1024), ((5, 15, 0, 512), 128),
         ((0, 200, 0, 200), 200), ((0, 512, 0, 512), 1024)]


def test_resize_and_normalise_are_pythons_bit_for_bit(photo, tmp_path):
    from edgesam_core.inference.exported_predictor import preprocess

    calls, expected = [], []
    for (y0, y1, x0, x1), size in CROPS:
        crop = np.ascontiguousarray(photo[y0:y1, x0:x1])
        h, w = crop.shape[:2]
        rgba = np.concatenate([crop, np.full((h, w, 1), 255, np.uint8)], axis=-1)
        calls.append({"fn": "preprocess", "args": [None, w, h, size], "typed": {"0": ["u8", _typed(rgba, "u8")]}})
        expected.append(preprocess(crop, size))
    for got, (x, (h, w)) in zip(_js(calls, tmp_path), expected):
        assert got["inputSize"] == [h, w]
        np.testing.assert_array_equal(got["input"].reshape(x.shape), x)  # every float32 bit


def test_prompt_packing_coords_and_rle_are_pythons(tmp_path):
    from edgesam_core.data.transforms import ResizeLongestSide
    from edgesam_core.inference.amg import encode_binary_mask
    from edgesam_core.inference.exported_predictor import pack_prompts

    rng = np.random.default_rng(0)
    points, labels, box = [[10.5, 20.25], [300.0, 7.0]], [1, 0], [4.0, 5.5, 200.0, 150.0]
    masks = [rng.random((37, 53)) > t for t in (0.5, 0.0, 1.0)]
    masks.append(np.pad(np.ones((10, 12), bool), ((3, 24), (5, 36))))
    calls = [
        {"fn": "applyCoords", "args": [points, [375, 500], 1024]},
        {"fn": "packPrompt", "args": [points, labels, None]},
        {"fn": "packPrompt", "args": [points, labels, box]},
        {"fn": "packPrompt", "args": [[], [], box]},
        *[{"fn": "cocoRle", "args": [None, 53, 37], "typed": {"0": ["u8", _typed(m.astype(np.uint8), "u8")]}}
          for m in masks],
    ]
    coords, no_box, with_box, box_only, *rles = _js(calls, tmp_path)
    want = ResizeLongestSide(1024).apply_coords(np.array(points), (375, 500))
    np.testing.assert_allclose(np.array(coords), want, rtol=0, atol=1e-12)
    for got, (c, l) in zip((no_box, with_box, box_only),
                           (pack_prompts(np.array([points]), np.array([labels]), None),
                            pack_prompts(np.array([points]), np.array([labels]), np.array([box])),
                            pack_prompts(None, None, np.array([box])))):
        np.testing.assert_array_equal(got["coords"].reshape(c.shape[1:]), c[0])
        np.testing.assert_array_equal(got["labels"], l[0])
    for got, mask in zip(rles, masks):
        assert got == encode_binary_mask(mask)


def test_mask_upscaling_and_stability_match_torch(tmp_path):
    from edgesam_core.inference.amg import stability_score_numpy
    from edgesam_core.inference.exported_predictor import postprocess_masks

    rng = np.random.default_rng(1)
    cases = [(64, 256, (256, 171), (750, 500)), (64, 256, (256, 256), (256, 256)), (32, 128, (61, 128), (61, 128)),
             (64, 256, (200, 256), (1000, 1280))]
    logits = [np.ascontiguousarray(rng.normal(0, 4, (side, side)).astype(np.float32)) for side, *_ in cases]
    calls = [{"fn": "postprocessMask", "args": [None, side, size, list(inp), list(orig)],
              "typed": {"0": ["f32", _typed(x, "f32")]}} for x, (side, size, inp, orig) in zip(logits, cases)]
    calls += [{"fn": "stabilityScore", "args": [None], "typed": {"0": ["f32", _typed(x, "f32")]}} for x in logits]
    calls.append({"fn": "stabilityScore", "args": [None],
                  "typed": {"0": ["f32", _typed(np.full((8, 8), -5, np.float32), "f32")]}})
    results = _js(calls, tmp_path)
    for got, x, (side, size, inp, orig) in zip(results, logits, cases):
        want = postprocess_masks(x[None], size, inp, orig)[0]
        got = got.reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        assert np.mean((got > 0) != (want > 0)) < 1e-4
    for got, x in zip(results[len(cases):], logits):
        assert got == pytest.approx(float(stability_score_numpy(x[None])[0]), abs=1e-7)
    assert np.isnan(results[-1]), "an empty mask's stability is NaN, as in Python"
