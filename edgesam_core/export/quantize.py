"""Static int8 quantisation of the exported ONNX encoder and decoder, with a fidelity report.

onnxruntime's ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations,
calibrated (min/max) on real images pushed through the predictor's preprocessing; the decoder is calibrated
on fp32 encoder embeddings of the same images with sampled point, box and box+point prompts. The encoder is
quantised whole; in the decoder only weight-bearing Conv/ConvTranspose/MatMul/Gemm nodes are, while the
activation x activation MatMuls (attention, mask hypernetwork) stay fp32. Fidelity is
measured on held-out images: embedding cosine similarity, mask IoU of the int8 pipeline against the fp32
one (point and box prompts), and the median latency of both (2 threads, after warm-up).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import InputError
from edgesam_core.progress import NullProgress, Progress


@dataclass
class QuantizeOptions:
    """Calibration/evaluation data and measurement settings (mirrors ``edgesam quantize``)."""

    calib_dir: Path
    eval_dir: Path | None = None
    eval_fraction: float = 0.25
    max_calib: int = 32
    max_eval: int = 16
    prompts_per_image: int = 3
    out_dir: Path | None = None
    per_channel: bool = True
    threads: int = 2
    latency_runs: int = 10
    warmup_runs: int = 2
    seed: int = 0
    #: Keep the encoder's GELUs exact (float32 between dequantisation and quantisation) instead of
    #: ``x * sigmoid(1.702 x)`` on uint8 (see :mod:`.int8_gelu`).
    exact_gelu: bool = False


#: The rule's absolute term for the int8 report (the floor carries int8's rounding).
FLOOR_TOLERANCE_INT8 = 1e-5


@dataclass
class QuantizeReport:
    """What was written and how close int8 stays to fp32."""

    fp32_encoder: str
    fp32_decoder: str
    int8_encoder: str
    int8_decoder: str
    calib_images: int
    eval_images: int
    size_bytes: dict[str, int]
    embedding_cosine_mean: float
    embedding_cosine_min: float
    mask_iou_point_mean: float
    mask_iou_point_min: float
    mask_iou_box_mean: float
    mask_iou_box_min: float
    mask_iou_int8_encoder_only_mean: float
    latency_ms: dict[str, float]
    latency_runs: int
    threads: int
    notes: list[str] = field(default_factory=list)
    #: Both int8 graphs against the float64 model under the noise-floor rule at int8's rounding (reported,
    #: not gated): see ``compare_with_onnxruntime``.
    parity: dict[str, Any] = field(default_factory=dict)
    #: How the encoder's GELUs run in int8 (see ``QuantizeOptions.exact_gelu``).
    gelu: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _FeedReader:
    """A ``CalibrationDataReader`` over a list of feeds (subclassed at runtime from onnxruntime's base)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


def int8_paths(fp32_encoder: Path, out_dir: Path | None) -> tuple[Path, Path]:
    """``X_encoder.onnx`` -> ``X_int8_encoder.onnx`` / ``X_int8_decoder.onnx`` (a loadable pair)."""
    stem = fp32_encoder.name[: -len("_encoder.onnx")]
    folder = Path(out_dir) if out_dir else fp32_encoder.parent
    return folder / f"{stem}_int8_encoder.onnx", folder / f"{stem}_int8_decoder.onnx"


def split_images(opts: QuantizeOptions) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out evaluation image lists (``eval_dir`` or a split of ``calib_dir``)."""
    from edgesam_core.inference.image_io import list_images

    calib = list_images(opts.calib_dir)
    if opts.eval_dir is not None:
        held = list_images(opts.eval_dir)
    else:
        if len(calib) < 2:
            raise InputError(f"{opts.calib_dir} has {len(calib)} image(s): need 2 or more to hold some out, "
                             "or pass --eval DIR")
        n_eval = min(max(1, round(len(calib) * opts.eval_fraction)), len(calib) - 1)
        calib, held = calib[:-n_eval], calib[-n_eval:]
    return calib[: opts.max_calib], held[: opts.max_eval]


def _sample_prompts(rng: np.random.Generator, input_size: tuple[int, int], n: int) -> list[dict[str, Any]]:
    """Point, box and box+point prompts inside the resized image region (model frame)."""
    h, w = input_size
    out = []
    for i in range(n):
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        box = np.array([[x0, y0, max(x1, x0 + 4), max(y1, y0 + 4)]], np.float32)
        pts = np.stack([rng.uniform(0, w, 2), rng.uniform(0, h, 2)], axis=-1)[None].astype(np.float32)
        kind = i % 3
        if kind == 0:
            out.append({"coords": pts, "labels": np.array([[1, 0]], np.float32), "box": None})
        elif kind == 1:
            out.append({"coords": None, "labels": None, "box": box})
        else:
            out.append({"coords": pts[:, :1], "labels": np.ones((1, 1), np.float32), "box": box})
    return out


#: Decoder policy: only ops that carry weights are quantised (see ``_weightless_matmuls``).
DECODER_OP_TYPES = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


def _weightless_matmuls(model_path: Path) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (attention QK^T and AV, hypernetwork x features).

    Quantising those products to uint8 costs most of the decoder's mask fidelity for little speed: measured on
    full-size edge_sam_dyt (random weights), mask IoU int8-vs-fp32 rose from 0.65 to 0.95 with them in fp32,
    at the same decoder latency.
    """
    from edgesam_core.deps import require

    onnx = require("onnx")
    model = onnx.load(str(model_path))
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def broadcast_expanded_gates(model: Any) -> int:
    """Undo the fp32 export's expanded squeeze-excite gates in an ONNX ``model`` (in place); returns the count.

    ``x * Resize(gate, size of x, nearest)`` becomes ``x * gate`` (the same product, broadcast): the fp32 graph
    expands gates to stay in ONNX Runtime's blocked layout, but in an int8 graph the quantised multiply
    broadcasts natively and a quantised ``Resize`` of every gate is pure cost (measured 6.4 ms of a 78 ms
    encoder). Nodes left without consumers are removed.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    count = 0
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        for i, name in enumerate(node.input):
            resize = producers.get(name)
            if resize is None or resize.op_type != "Resize":
                continue
            source = producers.get(resize.input[0])
            if source is not None and source.op_type == "Sigmoid":
                node.input[i] = resize.input[0]
                count += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    changed = True
    while changed:  # drop what fed only the removed Resizes (their size computations)
        keep = [n for n in graph.node if any(out in used for out in n.output)]
        changed = len(keep) != len(graph.node)
        del graph.node[:]
        graph.node.extend(keep)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    return count


def spatial_means_as_pools(model: Any) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` of a 4-D ``x`` as ``GlobalAveragePool(x)`` in an ONNX
    ``model`` (in place); returns the count.

    The same mean, but ONNX Runtime's QDQ fusion turns ``DQ -> GlobalAveragePool -> Q`` into one
    ``QLinearGlobalAveragePool`` on uint8 data, where a ``ReduceMean`` stays in fp32 behind a dequantisation
    of its whole input: the squeeze-excite means cost 6.2 ms of a 78 ms int8 encoder before, 0.4 ms after
    (full-size EdgeSAM-DyT, 2 threads).
    """
    from edgesam_core.deps import require

    numpy_helper = require("onnx.numpy_helper", extra="onnx")
    constants = {init.name: init for init in model.graph.initializer}
    constants.update({node.output[0]: node.attribute[0].t for node in model.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
             if v.type.tensor_type.HasField("shape")}
    count = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "keepdims" in attrs and attrs["keepdims"].i != 1:
            continue
        if "axes" in attrs:
            axes = list(attrs["axes"].ints)
        elif len(node.input) > 1 and node.input[1] in constants:
            axes = numpy_helper.to_array(constants[node.input[1]]).tolist()
        else:
            continue
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        count += 1
    return count


def _quantize_file(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], per_channel: bool,
                   notes: list[str], decoder: bool = False, table_gelu: bool = False) -> None:
    """Quantise ``src`` to ``dst`` (QDQ), calibrated on ``feeds``; ``table_gelu``: GELUs as uint8 table ops."""
    from edgesam_core.deps import require
    from edgesam_core.export.int8_gelu import fold_scalar_multiplies, gelus_as_sigmoid_products

    q = require("onnxruntime.quantization", extra="onnx", purpose="int8 quantisation")
    onnx = require("onnx", purpose="int8 quantisation")
    prepared = dst.with_name(dst.name + ".prep.tmp")
    tmp = dst.with_name(dst.name + ".tmp")
    unexpanded = dst.with_name(dst.name + ".gates.tmp")
    source = src
    try:
        model = onnx.load(str(src))
        if not decoder:  # shapes known before the rewrite
            model = onnx.shape_inference.infer_shapes(model)
        gelus = gelus_as_sigmoid_products(model) if table_gelu else 0
        if gelus + broadcast_expanded_gates(model) + (0 if decoder else spatial_means_as_pools(model)):
            onnx.save(model, str(unexpanded))
            source = unexpanded
        try:
            # Shape inference + graph optimisation first, as onnxruntime recommends for static quantisation.
            q.shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            source = prepared
        except Exception as exc:  # noqa: BLE001 - optional step; quantise the plain graph instead
            notes.append(f"{src.name}: pre-processing skipped ({type(exc).__name__})")
        reader_cls = type("FeedReader", (_FeedReader, q.CalibrationDataReader), {})
        selection = {"op_types_to_quantize": DECODER_OP_TYPES,
                     "nodes_to_exclude": _weightless_matmuls(source)} if decoder else {}
        q.quantize_static(
            str(source), str(tmp), reader_cls(feeds),
            quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            # MinMax keeps only per-tensor min/max per image, so memory does not grow with the image count.
            # (Not "CalibMaxIntermediateOutputs": onnxruntime 1.32 drops the collected data at that limit.)
            calibrate_method=q.CalibrationMethod.MinMax,
            **selection,
        )
        if gelus:
            quantized = onnx.load(str(tmp))
            folded = fold_scalar_multiplies(quantized)
            onnx.save(quantized, str(tmp))
            if folded < gelus:
                notes.append(f"{src.name}: {folded} of {gelus} GELUs run on uint8 tables, the rest in float32")
        tmp.replace(dst)
    finally:
        for leftover in (prepared, tmp, unexpanded):
            if leftover.exists():
                leftover.unlink()


def median_latency_ms(fn: Any, runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if denom == 0 else float(a @ b / denom)


def int8_fidelity(reference: Any, candidate: Any, images: list[np.ndarray], prompts_per_image: int,
                  seed: int = 0) -> dict[str, Any]:
    """How far ``candidate``'s masks are from ``reference``'s (any two predictors) on ``images``.

    Per image: the embeddings' cosine similarity, and ``prompts_per_image`` random one-click and box prompts
    (single-mask output); returns mean/min cosine, mask IoU per prompt kind, and the share of the image the
    reference masks cover (all-empty masks would make every IoU a vacuous 1).
    """
    rng = np.random.default_rng(seed)
    cosines: list[float] = []
    ious: dict[str, list[float]] = {"point": [], "box": []}
    areas: list[float] = []  # the reference masks' share of the image: an IoU of empty masks means nothing
    for image in images:
        reference.set_image(image)
        candidate.set_image(image)
        cosines.append(_cosine(np.asarray(reference.get_image_embedding()),
                               np.asarray(candidate.get_image_embedding())))
        h, w = image.shape[:2]
        for _ in range(prompts_per_image):
            x0, x1 = sorted(rng.uniform(0, w, 2))
            y0, y1 = sorted(rng.uniform(0, h, 2))
            prompts = {"point": {"point_coords": np.array([[rng.uniform(0, w), rng.uniform(0, h)]]),
                                 "point_labels": np.array([1])},
                       "box": {"box": np.array([x0, y0, x1 + 1, y1 + 1])}}
            for kind, args in prompts.items():
                expected = reference.predict(**args, num_multimask_outputs=1).masks
                areas.append(float(np.mean(expected)))
                ious[kind].append(_iou(expected, candidate.predict(**args, num_multimask_outputs=1).masks))

    def stats(values: list[float]) -> dict[str, Any]:
        # A non-finite embedding (an int8 LayerNorm can overflow) gives a NaN cosine: counted, not averaged.
        finite = [v for v in values if np.isfinite(v)]
        out: dict[str, Any] = {"mean": float(np.mean(finite)) if finite else None,
                               "min": float(np.min(finite)) if finite else None}
        if len(finite) < len(values):
            out["non_finite"] = len(values) - len(finite)
        return out

    return {"images": len(images), "prompts_per_image": prompts_per_image, "embedding_cosine": stats(cosines),
            "mask_iou": {kind: stats(v) for kind, v in ious.items()},
            "reference_mask_fraction": {"mean": float(np.mean(areas)), "min": float(np.min(areas)),
                                        "max": float(np.max(areas))}}


def _load_images(paths: Iterable[Path]) -> list[np.ndarray]:
    from edgesam_core.inference.image_io import load_image

    return [load_image(p) for p in paths]


def quantize_pair(fp32_encoder: str | Path, opts: QuantizeOptions, progress: Progress | None = None) -> QuantizeReport:
    """Quantise ``X_encoder.onnx`` and ``X_decoder.onnx`` to int8 and measure the fidelity.

    Args:
        fp32_encoder: the fp32 encoder written by ``export-onnx`` (the decoder is found beside it).
        opts: calibration/evaluation settings.
        progress: progress reporter.

    Returns:
        The report (also written as ``X_int8_report.json`` by the CLI).
    """
    from edgesam_core.export.parity import decoder_feed
    from edgesam_core.inference.onnx_predictor import (
        OnnxSamPredictor,
        create_session,
        decoder_path_for,
        preprocess,
    )

    progress = progress or NullProgress()
    fp32_encoder = Path(fp32_encoder)
    fp32_decoder = decoder_path_for(fp32_encoder)
    for path in (fp32_encoder, fp32_decoder):
        if not path.is_file():
            raise InputError(f"ONNX file not found: {path} (export it first with 'edgesam export-onnx')")
    calib_paths, eval_paths = split_images(opts)
    int8_encoder, int8_decoder = int8_paths(fp32_encoder, opts.out_dir)
    int8_encoder.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    rng = np.random.default_rng(opts.seed)

    encoder = create_session(fp32_encoder, opts.threads, role="encoder")
    create_session(fp32_decoder, opts.threads, role="decoder")  # a corrupt or swapped decoder fails now, not later
    task = progress.add_task("Calibrating", total=len(calib_paths) + 4)
    img_size = int(encoder.get_inputs()[0].shape[-1])
    enc_feeds: list[dict[str, np.ndarray]] = []
    dec_feeds: list[dict[str, np.ndarray]] = []
    for image in _load_images(calib_paths):
        x, input_size = preprocess(image, img_size)
        enc_feeds.append({"image": x})
        outs = encoder.run(None, {"image": x})
        for prompt in _sample_prompts(rng, input_size, opts.prompts_per_image):
            dec_feeds.append(decoder_feed(prompt, outs[0], outs[1:] or None))
        progress.advance(task)
    progress.update(task, description="Quantising encoder")
    _quantize_file(fp32_encoder, int8_encoder, enc_feeds, opts.per_channel, notes, table_gelu=not opts.exact_gelu)
    progress.advance(task)
    progress.update(task, description="Quantising decoder")
    _quantize_file(fp32_decoder, int8_decoder, dec_feeds, opts.per_channel, notes, decoder=True)
    progress.advance(task)

    progress.update(task, description="Measuring fidelity")
    fp32 = OnnxSamPredictor(fp32_encoder, fp32_decoder, threads=opts.threads, providers=["CPUExecutionProvider"])
    int8 = OnnxSamPredictor(int8_encoder, int8_decoder, threads=opts.threads, providers=["CPUExecutionProvider"])
    # int8 encoder + fp32 decoder: tells how much of the mask error the decoder's quantisation adds.
    mixed = OnnxSamPredictor(int8_encoder, fp32_decoder, threads=opts.threads, providers=["CPUExecutionProvider"])
    cosines, iou_point, iou_box, iou_mixed = [], [], [], []
    for image in _load_images(eval_paths):
        fp32.set_image(image)
        int8.set_image(image)
        mixed.set_image(image)
        cosines.append(_cosine(fp32.get_image_embedding(), int8.get_image_embedding()))
        h, w = image.shape[:2]
        for _ in range(opts.prompts_per_image):
            point = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
            x0, x1 = sorted(rng.uniform(0, w, 2))
            y0, y1 = sorted(rng.uniform(0, h, 2))
            point_args = {"point_coords": point, "point_labels": np.array([1]), "num_multimask_outputs": 1}
            box_args = {"box": np.array([x0, y0, x1 + 1, y1 + 1]), "num_multimask_outputs": 1}
            for args, ious in ((point_args, iou_point), (box_args, iou_box)):
                reference = fp32.predict(**args).masks
                ious.append(_iou(reference, int8.predict(**args).masks))
                iou_mixed.append(_iou(reference, mixed.predict(**args).masks))
    parity = _float64_parity(fp32_encoder, int8.encoder, int8.decoder)
    progress.advance(task)

    progress.update(task, description="Timing fp32 vs int8")
    latency: dict[str, float] = {}
    image_feed = enc_feeds[0]
    prompt = {"coords": np.array([[[0.4 * img_size, 0.4 * img_size]]], np.float32),
              "labels": np.ones((1, 1), np.float32), "box": None}
    for label, predictor in (("fp32", fp32), ("int8", int8)):
        enc_out = predictor.encoder.run(None, image_feed)
        feed = decoder_feed(prompt, enc_out[0], enc_out[1:] or None)
        latency[f"encoder_{label}"] = median_latency_ms(lambda p=predictor: p.encoder.run(None, image_feed),
                                                        opts.latency_runs, opts.warmup_runs)
        latency[f"decoder_{label}"] = median_latency_ms(lambda p=predictor, f=feed: p.decoder.run(None, f),
                                                        opts.latency_runs, opts.warmup_runs)
    progress.advance(task)
    progress.finish(task)

    def stats(values: list[float]) -> tuple[float, float]:
        return (float(np.mean(values)), float(np.min(values))) if values else (float("nan"), float("nan"))

    cos_mean, cos_min = stats(cosines)
    pt_mean, pt_min = stats(iou_point)
    box_mean, box_min = stats(iou_box)
    sizes = {p.name: p.stat().st_size for p in (fp32_encoder, fp32_decoder, int8_encoder, int8_decoder)}
    _write_int8_sidecars(((fp32_encoder, int8_encoder), (fp32_decoder, int8_decoder)), opts, len(calib_paths))
    return QuantizeReport(
        str(fp32_encoder), str(fp32_decoder), str(int8_encoder), str(int8_decoder),
        len(calib_paths), len(eval_paths), sizes, cos_mean, cos_min, pt_mean, pt_min, box_mean, box_min,
        stats(iou_mixed)[0], latency, opts.latency_runs, opts.threads, notes, parity, gelu_form(opts),
    )


def gelu_form(opts: QuantizeOptions) -> str:
    """How ``opts`` has the int8 encoder compute GELU (for the report and the sidecar)."""
    from edgesam_core.export.int8_gelu import SIGMOID_GELU_ALPHA

    if opts.exact_gelu:
        return "exact GELU in float32 between dequantisation and quantisation"
    return f"x*sigmoid({SIGMOID_GELU_ALPHA}x) on uint8 (QLinearSigmoid table, QLinearMul)"


def _float64_parity(fp32_encoder: Path, encoder: Any, decoder: Any) -> dict[str, Any]:
    """The int8 sessions judged by the same noise-floor rule as every backend, at int8's rounding (report only).

    ``excess`` per entry is the distance over the limit (> 1: beyond what int8 rounding alone explains).
    """
    from edgesam_core.export.runtime_pair import compare_with_onnxruntime, resolve_onnx_pair

    pair = resolve_onnx_pair(fp32_encoder)
    report = compare_with_onnxruntime(pair, {"encoder": encoder, "decoder": decoder},
                                      tolerance=FLOOR_TOLERANCE_INT8, precision="int8")
    payload = report.to_dict()
    payload["gated"] = False
    for item, entry in zip(payload["entries"], report.entries):
        item["excess"] = report.excess(entry)
    return payload


def _write_int8_sidecars(pairs: Iterable[tuple[Path, Path]], opts: QuantizeOptions, n_calib: int) -> None:
    """``X_int8_*.json`` next to each int8 graph: the fp32 sidecar (when present) plus how it was quantised."""
    import json

    from edgesam_core.deps import require
    from edgesam_core.export.sidecar import (
        atomic_write_json,
        io_spec,
        sha256_file,
        sidecar_path,
    )

    onnx = require("onnx")
    for fp32, int8 in pairs:
        source = sidecar_path(fp32)
        meta = json.loads(source.read_text()) if source.is_file() else {}
        meta.pop("parity", None)  # measured for the fp32 graph only; see the int8 report instead
        meta.update({
            "file": int8.name,
            "io": io_spec(onnx.load(str(int8), load_external_data=False)),
            "quantization": {"method": "onnxruntime quantize_static", "format": "QDQ",
                             "weights": "int8 per-channel" if opts.per_channel else "int8 per-tensor",
                             "activations": "uint8", "calibration": "MinMax", "calibration_images": n_calib,
                             "ops": "all" if int8.name.endswith("_encoder.onnx") else
                             f"{'/'.join(DECODER_OP_TYPES)} with weights; activation x activation MatMuls fp32",
                             "fp32_source": fp32.name, "fp32_sha256": sha256_file(fp32)},
        })
        if int8.name.endswith("_encoder.onnx"):
            meta["quantization"]["gelu"] = gelu_form(opts)
        atomic_write_json(sidecar_path(int8), meta)


def report_path(int8_encoder: str | Path) -> Path:
    """``X_int8_encoder.onnx`` -> ``X_int8_report.json``."""
    int8_encoder = Path(int8_encoder)
    return int8_encoder.with_name(int8_encoder.name[: -len("_encoder.onnx")] + "_report.json")
