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
    sidecar = encoder.with_suffix(".json")
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            data = {}
        for key in ("model_type", "is_hq", "img_size", "checkpoint", "checkpoint_sha256", "upsample_mode"):
            if key in data:
                meta[key] = data[key]
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


def compare_with_onnxruntime(pair: OnnxPair, runners: Mapping[str, Any], tolerance: float,
                             image: np.ndarray | None = None,
                             references: Mapping[str, str | Path | bytes] | None = None) -> Any:
    """Run ``runners`` (by role) and ONNX Runtime on the same fixed inputs; returns a ``ParityReport``.

    The decoder is fed ONNX Runtime's encoder outputs so its figures measure the decoder alone. Runners with
    a ``prepare_feed`` (static prompt layouts, padded with label -1 points) are compared twice: with ONNX
    Runtime on the same padded prompt (the conversion), and with ONNX Runtime on the prompt as given (what the
    user gets); padding's own effect is measured, listed in ``report.padding`` and allowed for in the
    second comparison. Prompt cases the runner cannot take are left out.
    """
    from edgesam_core.export import parity as P

    references = dict(references or {})
    report = P.ParityReport(tolerance)
    img_size = int(pair.metadata["img_size"])
    x = encoder_input(img_size, image)
    ref_encoder = _session(references.get("encoder", pair.encoder))
    ref_feats = ref_encoder.run(None, {"image": x})
    names = [o.name for o in ref_encoder.get_outputs()]
    if "encoder" in runners:
        got = runners["encoder"].run(None, {"image": x})
        for name, ref, out in zip(names, ref_feats, got):
            report.add("encoder", "synthetic", name, np.asarray(out), ref)
    if "decoder" in runners:
        runner = runners["decoder"]
        ref_decoder = _session(references.get("decoder", pair.decoder))
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
                report.add("decoder", case_name, name, np.asarray(g), r)
            if feed is not given:
                # The user's prompt as given, without the static layout's padding: what padding itself
                # changes is measured, said in the sidecar, and allowed for; the rest must be conversion noise.
                as_given = ref_decoder.run(None, given)
                for name, r, g, padded in zip(out_names, as_given, got, ref):
                    effect = float(np.abs(padded.astype(np.float64) - r).max())
                    report.padding.append({"case": case_name, "output": name, "max_abs_change": effect,
                                           "mask_agreement": _mask_agreement(padded, r) if name == "masks" else None})
                    report.add("decoder (prompt as given)", case_name, name, np.asarray(g), r, absolute=(
                        report.tolerance + effect / max(1.0, float(np.abs(r).max()))))
    return report
