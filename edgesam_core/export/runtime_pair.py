"""What the TFLite and TensorRT backends share: finding the ONNX pair and checking a runtime against it.

Both backends start from ``<name>_encoder.onnx`` + ``<name>_decoder.onnx`` (exporting them first when given a
checkpoint) and finish by running their artifacts next to ONNX Runtime on the same fixed inputs. A
*runner* is anything with an onnxruntime-like ``run(None, feed) -> [outputs]`` that takes and returns ONNX
names and layouts (NCHW), plus ``get_inputs()``/``get_outputs()`` whose items have ``.name`` and
``.shape``; runners with a static prompt layout expose ``prepare_feed(feed) -> feed``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import InputError
from edgesam_core.progress import NullProgress, Progress

ROLES = ("encoder", "decoder")
#: Label of the points added to reach a runtime's static point count (SAM's "not a point").
PAD_LABEL = -1.0


@dataclass
class OnnxPair:
    """An exported encoder/decoder pair and what its sidecar (or graph) says about the model."""

    encoder: Path
    decoder: Path
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def path(self, role: str) -> Path:
        """The ONNX file of ``role`` (``"encoder"`` or ``"decoder"``)."""
        return self.encoder if role == "encoder" else self.decoder


@dataclass
class TensorInfo:
    """Name and shape of one runner input/output (the subset of onnxruntime's ``NodeArg`` used here)."""

    name: str
    shape: list[Any]
    dtype: str = "float32"


def _pair_name(path: Path) -> str | None:
    for role in ROLES:
        suffix = f"_{role}.onnx"
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _graph_metadata(encoder: Path, decoder: Path) -> dict[str, Any]:
    """Model facts from the export sidecar (``X_encoder.json``), else from the graphs' I/O."""
    meta: dict[str, Any] = {}
    sidecars = {graph: _read_sidecar(graph) for graph in (encoder, decoder)}
    for key in ("model_type", "is_hq", "img_size", "checkpoint", "checkpoint_sha256", "upsample_mode"):
        if key in sidecars[encoder]:
            meta[key] = sidecars[encoder][key]
    meta["float64_parity"] = {k: v for graph, data in sidecars.items() for k, v in _float64_record(graph, data).items()}
    from edgesam_core.deps import require

    onnx = require("onnx", purpose="reading ONNX graphs")
    enc = _load_graph(onnx, encoder, "encoder")
    dec = _load_graph(onnx, decoder, "decoder")
    meta.setdefault("img_size", int(enc.graph.input[0].type.tensor_type.shape.dim[-1].dim_value))
    meta.setdefault("is_hq", len(enc.graph.output) == 4)
    mask_dims = dec.graph.output[-1].type.tensor_type.shape.dim
    emb_dims = dec.graph.input[0].type.tensor_type.shape.dim
    meta["embedding_grid"] = int(emb_dims[-1].dim_value)
    last = mask_dims[-1].dim_value if mask_dims and mask_dims[-1].HasField("dim_value") else 0
    meta["mask_size"] = int(last) or 4 * meta["embedding_grid"]
    return meta


def _read_sidecar(graph: Path) -> dict[str, Any]:
    """``X.json`` beside ``X.onnx`` as a dict (empty when missing or unreadable)."""
    try:
        data = json.loads(graph.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _float64_record(graph: Path, sidecar: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The export's float64 parity entries of ``graph`` (from its ``sidecar``), keyed ``graph/case/output``.

    Each keeps how far ONNX Runtime landed from the float64 model (``max_abs``, ``rms``) and the fp32 noise
    floor there (``floor_max``, ``floor_rms``). Empty for graphs without an edgesam sidecar, or whose
    sidecar no longer matches the file.
    """
    try:
        entries = sidecar["parity"]["entries"]
    except (KeyError, TypeError):
        return {}
    if sidecar.get("file") not in (None, graph.name):
        return {}
    record = {}
    for entry in entries if isinstance(entries, list) else []:
        try:
            if entry.get("absolute") is not None or not entry.get("floor_max"):
                continue  # float64-vs-float64 fold checks and entries without a measured floor
            record[f"{entry['graph']}/{entry['case']}/{entry['output']}"] = {
                k: float(entry[k]) for k in ("max_abs", "rms", "floor_max", "floor_rms")}
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return record


def _load_graph(onnx: Any, path: Path, role: str) -> Any:
    """``onnx.load`` that answers a corrupt or swapped file with one line naming it."""
    from edgesam_core.inference.onnx_predictor import ROLE_INPUT

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}); export it again with "
                         "'edgesam export-onnx'") from exc
    names = [i.name for i in graph.graph.input]
    if ROLE_INPUT[role] not in names:
        raise InputError(f"{path} is not a SAM {role} graph (inputs: {', '.join(names[:4]) or 'none'}); "
                         "pass the pair written by 'edgesam export-onnx' (were the files swapped?)")
    return graph


def resolve_onnx_pair(source: str | Path, output_dir: str | Path | None = None, *, variant: str | None = None,
                      upsample_mode: str | None = None, simplify: bool | None = None,
                      progress: Progress | None = None, opset: int | None = None,
                      portable: bool = False) -> OnnxPair:
    """Find (or create) the ONNX pair behind ``source``.

    Args:
        source: ``<name>_encoder.onnx`` or ``<name>_decoder.onnx`` (the sibling must exist), or a PyTorch
            checkpoint, which is exported with ``edgesam export-onnx``'s code into ``output_dir``.
        output_dir: where a checkpoint's ONNX files go (default: beside the checkpoint).
        variant: model variant of a checkpoint (default ``edge_sam_dyt``).
        upsample_mode: encoder neck upsampling for a checkpoint export (default: the exporter's).
        simplify: onnxsim for a checkpoint export (default: the exporter's).
        progress: progress reporter for the export.

    Raises:
        InputError: missing files or an ONNX file not named like an exported pair.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"Input not found: {source}")
    if source.suffix.lower() == ".onnx":
        name = _pair_name(source)
        if name is None:
            raise InputError(f"{source.name}: expected '<name>_encoder.onnx' or '<name>_decoder.onnx' "
                             "(as written by 'edgesam export-onnx')")
        encoder = source.with_name(f"{name}_encoder.onnx")
        decoder = source.with_name(f"{name}_decoder.onnx")
        for path in (encoder, decoder):
            if not path.is_file():
                raise InputError(f"{path.name} not found next to {source.name}: export both graphs with "
                                 "'edgesam export-onnx'")
        return OnnxPair(encoder, decoder, name, _graph_metadata(encoder, decoder))

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

    out_dir = Path(output_dir) if output_dir else source.parent
    opts = OnnxExportOptions(model_type=variant or "edge_sam_dyt", out_dir=out_dir, name=source.stem,
                             simplify=simplify)
    if upsample_mode:
        opts.upsample_mode = upsample_mode
    if opset:
        opts.opset = opset
    if portable:  # graphs for other converters: opset 17, no ONNX Runtime specific rewrites
        opts.opset, opts.runtime_rewrites = 17, False
    (progress or NullProgress()).log(f"exporting {source.name} to ONNX first ...")
    result = export_onnx(source, opts, progress=progress)
    encoder, decoder = result.files["encoder"], result.files["decoder"]
    return OnnxPair(encoder, decoder, source.stem, _graph_metadata(encoder, decoder))


def encoder_input(img_size: int, image: np.ndarray | None = None) -> np.ndarray:
    """The encoder input for the fixed parity image (or ``image``): ``1x3xSxS`` float32."""
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.inference.onnx_predictor import preprocess

    x, _ = preprocess(synthetic_image() if image is None else image, img_size)
    return x


def pack_static_prompts(feed: Mapping[str, np.ndarray], num_points: int) -> dict[str, np.ndarray]:
    """Rewrite a decoder feed for a graph with a fixed prompt layout of ``num_points`` points.

    Valid points come first, then a valid box as two corner points labelled 2 and 3 (the decoder embeds
    them exactly like box corners), then (0, 0) points labelled -1 up to ``num_points``. The result says
    ``point_valid=True``, ``boxes_valid=False`` with zero boxes, which is what the static graph computes.

    Raises:
        InputError: the prompt needs more than ``num_points`` points.
    """
    feed = dict(feed)
    coords = np.zeros((1, 0, 2), np.float32)
    labels = np.zeros((1, 0), np.float32)
    if bool(np.asarray(feed.get("point_valid", True)).reshape(-1)[0]):
        coords = np.asarray(feed["point_coords"], np.float32).reshape(1, -1, 2)
        labels = np.asarray(feed["point_labels"], np.float32).reshape(1, -1)
    if bool(np.asarray(feed.get("boxes_valid", False)).reshape(-1)[0]):
        corners = np.asarray(feed["boxes"], np.float32).reshape(1, 2, 2)
        coords = np.concatenate([coords, corners], axis=1)
        labels = np.concatenate([labels, np.array([[2.0, 3.0]], np.float32)], axis=1)
    have = coords.shape[1]
    if have > num_points:
        raise InputError(f"this prompt needs {have} points (a box counts as 2) but the model was converted for "
                         f"{num_points}; convert again with --num-points {have} or more")
    extra = num_points - have
    feed["point_coords"] = np.concatenate([coords, np.zeros((1, extra, 2), np.float32)], axis=1)
    feed["point_labels"] = np.concatenate([labels, np.full((1, extra), PAD_LABEL, np.float32)], axis=1)
    feed["boxes"] = np.zeros((1, 1, 4), np.float32)
    feed["point_valid"] = np.ones((1, 1), bool)
    feed["boxes_valid"] = np.zeros((1, 1), bool)
    return feed


def _session(source: str | Path | bytes) -> Any:
    from edgesam_core.deps import require

    ort = require("onnxruntime", purpose="checking exported models")
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the thresholded masks (logits > 0) of two decoder outputs (1.0 when both are empty)."""
    ma, mb = a > 0, b > 0
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 1.0


#: Unit roundoff of each precision. A floor measured for fp32 is scaled by ``EPS[p] / EPS["fp32"]`` for a
#: runtime that computes (or stores weights) in precision ``p``; int8 uses half a step of a 256-level scale.
EPS = {"fp32": 2.0**-24, "fp16": 2.0**-11, "int8": 2.0**-9}


#: The absolute term of the rule when the pair carries its float64 record (export-onnx's default).
FLOOR_TOLERANCE = 1e-5


def default_tolerance(pair: OnnxPair, fixed: float | None) -> float | None:
    """A backend's default ``tolerance``: :data:`FLOOR_TOLERANCE` where the float64 floors are known, else
    the backend's ``fixed`` tolerance against ONNX Runtime (``None``: report only, as for int8)."""
    if fixed is None:
        return None
    return FLOOR_TOLERANCE if pair.metadata.get("float64_parity") else fixed


def compare_with_onnxruntime(pair: OnnxPair, runners: Mapping[str, Any], tolerance: float,
                             image: np.ndarray | None = None,
                             references: Mapping[str, str | Path | bytes] | None = None,
                             precision: str = "fp32") -> Any:
    """Run ``runners`` (by role) and ONNX Runtime on the same fixed inputs; returns a ``ParityReport``.

    The rule is export-onnx's: distance from the float64 model within ``noise_factor`` x the fp32 noise
    floor (scaled to ``precision``, see :data:`EPS`) plus ``tolerance`` x max(1, |ref|). The float64 model is
    not at hand here, so each entry's distance is bounded by the triangle inequality: the runner's distance
    from ONNX Runtime on these inputs plus ONNX Runtime's distance from float64 that the export recorded in
    its sidecar on the same inputs, with the floor measured there. A pair without that record (not written
    by edgesam) is judged on its distance from ONNX Runtime with ``tolerance`` alone.

    The decoder is fed ONNX Runtime's encoder outputs so its figures measure the decoder alone. Runners with
    a ``prepare_feed`` (static prompt layouts, padded with label -1 points) are compared twice: with ONNX
    Runtime on the same padded prompt (the conversion), and with ONNX Runtime on the prompt as given (what the
    user gets); padding's own effect is measured, listed in ``report.padding`` and allowed for in the
    second comparison. Prompt cases the runner cannot take are left out. ``references`` replaces a role's
    ONNX reference (e.g. an encoder with a substituted op): its entries measure the conversion only.
    """
    from edgesam_core.export import parity as P

    references = dict(references or {})
    record: dict[str, dict[str, float]] = pair.metadata.get("float64_parity") or {}
    scale = EPS[precision] / EPS["fp32"]
    report = P.ParityReport(tolerance, reference=(
        f"float64 model, bounded via ONNX Runtime (floors from the export, x{scale:g} for {precision})"
        if record else "ONNX Runtime fp32 (the pair has no float64 record)"))

    def add(graph: str, case: str, output: str, got: np.ndarray, ref: np.ndarray, own_reference: bool,
            absolute: float | None = None) -> None:
        known = record.get(f"{graph.split(' (')[0]}/{case}/{output}")
        report.add(graph, case, output, np.asarray(got), ref, absolute=absolute)
        if known is None:
            return
        entry = report.entries[-1]
        if own_reference:  # the record's ONNX Runtime run had these very inputs: bound the distance from float64
            entry.max_abs += known["max_abs"]
            entry.rms += known["rms"]
        # Otherwise (a padded prompt, a substituted op) the reference is ONNX Runtime on the runner's own input
        # and the entry measures the conversion; the floor of the nearly identical recorded input still holds.
        entry.floor_max, entry.floor_rms = scale * known["floor_max"], scale * known["floor_rms"]

    img_size = int(pair.metadata["img_size"])
    x = encoder_input(img_size, image)
    ref_encoder = _session(references.get("encoder", pair.encoder))
    ref_feats = ref_encoder.run(None, {"image": x})
    names = [o.name for o in ref_encoder.get_outputs()]
    if "encoder" in runners:
        got = runners["encoder"].run(None, {"image": x})
        for name, ref, out in zip(names, ref_feats, got):
            add("encoder", "synthetic", name, out, ref, "encoder" not in references)
    if "decoder" in runners:
        runner = runners["decoder"]
        ref_decoder = _session(references.get("decoder", pair.decoder))
        own = "decoder" not in references
        out_names = [o.name for o in ref_decoder.get_outputs()]
        for case_name, case in P.prompt_cases(img_size).items():
            given = P.decoder_feed(case, ref_feats[0], ref_feats[1:] if pair.metadata.get("is_hq") else None)
            feed = given
            if hasattr(runner, "prepare_feed"):
                try:
                    feed = runner.prepare_feed(given)
                except InputError:
                    continue  # more prompt points than the runtime's static point count
            ref = ref_decoder.run(None, feed)
            got = runner.run(None, feed)
            for name, r, g in zip(out_names, ref, got):
                # The padded prompt is another input than the export's record: the conversion alone.
                add("decoder", case_name, name, g, r, own and feed is given)
            if feed is not given:
                # The user's prompt as given, without the static layout's padding: what padding itself
                # changes is measured, said in the sidecar, and allowed for; the rest must be conversion noise.
                as_given = ref_decoder.run(None, given)
                for name, r, g, padded in zip(out_names, as_given, got, ref):
                    effect = float(np.abs(padded.astype(np.float64) - r).max())
                    report.padding.append({"case": case_name, "output": name, "max_abs_change": effect,
                                           "mask_agreement": _mask_agreement(padded, r) if name == "masks" else None})
                    add("decoder (prompt as given)", case_name, name, g, r, own, absolute=(
                        report.tolerance + effect / max(1.0, float(np.abs(r).max()))))
    return report
