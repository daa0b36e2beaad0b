"""Helpers shared by the benchmark scripts: the benchmarked model and the JSON report."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def build_model(variant: str, checkpoint: str | None = None, seed: int = 0, spread: float = 0.0) -> Any:
    """``variant`` with checkpoint weights, or ``torch.manual_seed(seed)`` random ones, in eval mode.

    ``spread`` > 0 adds N(0, spread) noise to the prompt-encoder and decoder weights: freshly initialised
    decoders predict near-constant logits, which makes every mask trivially empty or full.
    """
    import torch

    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    model = build_sam(variant, checkpoint).eval()
    if spread > 0:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters()):
                param.add_(torch.randn(param.shape, generator=generator) * spread)
    return model


def scratch_dir() -> Path:
    """A fresh folder for the run's exported files, removed when the benchmark exits."""
    work = Path(tempfile.mkdtemp(prefix="edgesam-bench-"))
    atexit.register(shutil.rmtree, work, True)
    return work


def emit_json(result: dict, out: str | Path | None) -> None:
    """Print ``result`` as indented JSON and, when ``out`` is given, write it there too."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def interleaved_rounds(cases: dict[str, Any], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Milliseconds per call of each case: one warm-up each, then ``rounds`` rounds visiting every case once, in
    an order shuffled each round (seeded): drift in the machine's speed hits all cases alike, and no case always
    follows the same one (a case run after a big one finds the caches cold: measured up to 10 % per click)."""
    import random
    import time

    import torch

    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    rng = random.Random(seed)
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                fn = cases[name]
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Sessions alternate on 2 cores: a spinning idle pool of one would steal time from the next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def previous_pair(model, x, emb, out: Path) -> dict[str, Path]:
    """The pair this project's exporter wrote before the inference form: RepViT folded, opset 17, no other
    rewrite (the reference of the inference-form and decoder benchmarks)."""
    import copy

    import onnx
    import onnxsim
    import torch

    from edgesam_core.export.onnx_export import OnnxExportOptions, _export_decoder, torch_onnx_export
    from edgesam_core.export.wrappers import ENCODER_INPUTS, EncoderForExport, encoder_output_names
    from edgesam_core.models.reparam import reparameterize_repvit

    old = copy.deepcopy(model).eval()
    reparameterize_repvit(old.image_encoder)
    paths = {"encoder": out / "previous_encoder.onnx", "decoder": out / "previous_decoder.onnx"}
    with torch.no_grad():
        torch_onnx_export(EncoderForExport(old), (x,), paths["encoder"], ENCODER_INPUTS, encoder_output_names(False),
                          {}, 17)
        simplified, _ = onnxsim.simplify(onnx.load(str(paths["encoder"])))
        onnx.save(simplified, str(paths["encoder"]))
        _export_decoder(old, emb, None, paths["decoder"], OnnxExportOptions(opset=17), False, [])
    return paths


def sample_photos(folder: Path, count: int = 8) -> Path:
    """Crops of matplotlib's sample photos (real images, no download), saved as PNGs."""
    import matplotlib.cbook as cbook
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [np.asarray(Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB"))
              for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        Image.fromarray(photo[y:y + ch, x:x + cw]).save(folder / f"crop_{i:02d}.png")
    return folder


def calibration_split(images: Path | None, work: Path, held_out: int) -> tuple[Path, list[Path], int]:
    """``images`` (sorted; default :func:`sample_photos`) split into a calibration folder of links under ``work``
    and the last ``held_out`` images: ``(calibration folder, held-out image paths, calibration count)``."""
    from edgesam_core.inference.image_io import list_images

    photos = list_images(images or sample_photos(work / "photos"))
    calib = work / "calib"
    calib.mkdir()
    for p in photos[:-held_out]:
        (calib / p.name).symlink_to(p.resolve())
    return calib, photos[-held_out:], len(photos) - held_out
