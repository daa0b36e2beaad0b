"""Build TensorRT engines from the encoder/decoder ONNX pair (``edgesam build-trt``).

One engine per graph, written as ``<name>_encoder_<precision>.engine`` / ``<name>_decoder_<precision>.engine``
with a JSON sidecar ``<engine>.json`` next to each (metadata stays out of the engine file, so any TensorRT
tool can read the engine). The decoder's dynamic ``num_points`` axis gets one optimisation profile
(min/opt/max points).

Precision: TensorRT 10 enables fp16 kernels with ``BuilderFlag.FP16``. TensorRT 11 removed precision flags
and builds strongly typed networks only, so for fp16 the ONNX graph itself is converted to float16 first
(:func:`edgesam_core.export.onnx_fp16.convert_onnx_to_fp16`, float32 I/O kept) and parsed into a
``STRONGLY_TYPED`` network. The version is detected at run time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesam_core import deps
from edgesam_core.errors import (
    ConfigError,
    EdgeSamError,
    ExportParityError,
    MissingDependencyError,
)
from edgesam_core.export.runtime_pair import (
    OnnxPair,
    compare_with_onnxruntime,
    default_tolerance,
    resolve_onnx_pair,
)
from edgesam_core.export.sidecar import (
    atomic_write_bytes,
    atomic_write_json,
    library_versions,
    sha256_file,
)
from edgesam_core.progress import NullProgress, Progress

#: Decoder inputs whose axis 1 is the dynamic number of points.
POINT_INPUTS = ("point_coords", "point_labels")
PRECISIONS = ("fp32", "fp16")
#: Parity tolerance against ONNX Runtime on the fp32 ONNX for a pair without a float64 record
#: (``max_abs <= tol * max(1, max|ref|)``); with the record, the noise-floor rule applies.
DEFAULT_TOLERANCE = {"fp32": 5e-3, "fp16": 5e-2}
#: The rounding each engine precision is judged at: fp32 engines may use TF32 kernels (TensorRT's default on
#: Ampere and newer, a 10-bit mantissa like fp16's), so both are held to fp16's noise floor.
FLOOR_PRECISION = {"fp32": "fp16", "fp16": "fp16"}


@dataclass(frozen=True)
class PointRange:
    """Optimisation-profile range for the decoder's number of points (``min <= opt <= max``)."""

    min: int = 1
    opt: int = 5
    max: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"point range must satisfy 1 <= min <= opt <= max, got min={self.min} opt={self.opt} "
                f"max={self.max}; fix --min-points/--opt-points/--max-points"
            )


@dataclass
class TrtBuildResult:
    """What ``build_trt`` wrote: engine paths, their sidecars and the parity report (a dict)."""

    engines: dict[str, Path]
    sidecars: dict[str, Path]
    parity: dict[str, Any] | None = None
    onnx: dict[str, Path] = field(default_factory=dict)


def require_tensorrt_gpu() -> Any:
    """Import ``tensorrt`` and check that a CUDA GPU is visible.

    Returns:
        The ``tensorrt`` module.

    Raises:
        MissingDependencyError: one line naming what is missing (the package, or the GPU).
    """
    trt = deps.require("tensorrt", purpose="building and running TensorRT engines")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            f"No CUDA GPU is available (torch.cuda.is_available() is False): TensorRT {trt.__version__} "
            "builds and runs engines only on an NVIDIA GPU; run build-trt on a machine with one",
            extra="trt",
        )
    return trt


def trt_major(trt: Any) -> int:
    """Major version of an imported ``tensorrt`` module."""
    return int(str(trt.__version__).split(".", 1)[0])


def uses_strongly_typed_fp16(trt: Any) -> bool:
    """True when fp16 must be baked into the ONNX graph (TensorRT >= 11, no ``BuilderFlag.FP16``)."""
    return trt_major(trt) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def profile_shapes(inputs: Iterable[tuple[str, Sequence[int]]], points: PointRange,
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes for every network input that has a dynamic (-1) dimension.

    Args:
        inputs: ``(name, shape)`` pairs as TensorRT reports them (-1 for dynamic).
        points: the range for the points axis of ``point_coords``/``point_labels``.

    Raises:
        ConfigError: a dynamic axis this builder does not know how to size.
    """
    profiles = {}
    for name, shape in inputs:
        shape = tuple(int(d) for d in shape)
        if all(d >= 0 for d in shape):
            continue
        low, mid, high = list(shape), list(shape), list(shape)
        for axis, dim in enumerate(shape):
            if dim >= 0:
                continue
            if name in POINT_INPUTS and axis == 1:
                low[axis], mid[axis], high[axis] = points.min, points.opt, points.max
            elif axis == 0:
                # Graphs here take one image (and one prompt set) per call.
                low[axis] = mid[axis] = high[axis] = 1
            else:
                raise ConfigError(
                    f"ONNX input '{name}' has a dynamic axis {axis} ({list(shape)}) that build-trt cannot size; "
                    "export the ONNX with static shapes except the number of points"
                )
        profiles[name] = (tuple(low), tuple(mid), tuple(high))
    return profiles


def format_parser_errors(parser: Any, source: str | Path) -> str:
    """One line listing every ``parser.get_error(i)`` (node, operator, description)."""
    parts = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = str(_call(err, "desc") or err).strip().replace("\n", " ")
        node = _call(err, "node_name") or ""
        op = _call(err, "node_operator") or ""
        where = f"node '{node}'" if node else f"node #{_call(err, 'node')}"
        where += f" ({op})" if op else ""
        parts.append(f"[{i + 1}] {where}: {desc}")
    listing = "; ".join(parts) if parts else "no error details reported"
    return f"TensorRT could not parse {Path(source).name}: {int(parser.num_errors)} error(s): {listing}"


def _call(obj: Any, method: str) -> Any:
    fn = getattr(obj, method, None)
    if fn is None:
        return None
    try:
        return fn() if callable(fn) else fn
    except Exception:
        return None


def engine_sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_engine_sidecar(engine: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` (plus the engine's size and SHA-256) to ``<engine>.json`` atomically."""
    engine = Path(engine)
    record = {"format": "tensorrt", "file": engine.name, **meta}
    if engine.exists():
        record["bytes"] = engine.stat().st_size
        record["sha256"] = sha256_file(engine)
    return atomic_write_json(engine_sidecar_path(engine), record)


def _network_inputs(network: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]


def build_engine(trt: Any, onnx_path: Path, engine_path: Path, *, precision: str, points: PointRange,
                 workspace_gib: float | None = None, verbose: bool = False) -> dict[str, Any]:
    """Parse one ONNX graph, build a serialized engine and write it atomically.

    Returns:
        Build metadata for the sidecar (precision mode, profile shapes, TensorRT version, timing).

    Raises:
        EdgeSamError: the parser rejected the graph (every parser error in the message) or the build failed.
    """
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly = precision == "fp16" and uses_strongly_typed_fp16(trt)
    if strongly:
        import onnx

        from edgesam_core.export.onnx_fp16 import convert_onnx_to_fp16

        payload = convert_onnx_to_fp16(onnx.load(str(onnx_path))).SerializeToString()
    else:
        payload = onnx_path.read_bytes()
    flags = 0
    typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if typed_flag is not None and (strongly or trt_major(trt) >= 11):
        flags |= 1 << int(typed_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(payload, str(onnx_path)):
        raise EdgeSamError(format_parser_errors(parser, onnx_path))

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and not strongly:
        config.set_flag(trt.BuilderFlag.FP16)
    profiles = profile_shapes(_network_inputs(network), points)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (low, mid, high) in profiles.items():
            profile.set_shape(name, low, mid, high)
        config.add_optimization_profile(profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeSamError(f"TensorRT failed to build an engine from {onnx_path.name}; rerun with --verbose "
                           "to see TensorRT's log")
    atomic_write_bytes(engine_path, bytes(serialized))
    return {
        "precision": precision,
        "precision_mode": "strongly-typed fp16 ONNX" if strongly else ("BuilderFlag.FP16" if precision == "fp16"
                                                                      else "fp32"),
        "tensorrt_version": str(trt.__version__),
        "profiles": {name: [list(s) for s in shapes] for name, shapes in profiles.items()},
        "build_seconds": round(time.perf_counter() - start, 2),
    }


def build_trt(source: str | Path, output_dir: str | Path | None = None, *, variant: str | None = None,
              name: str | None = None, precision: str = "fp32", points: PointRange = PointRange(),
              workspace_gib: float | None = None, check_parity: bool = True, tolerance: float | None = None,
              verbose: bool = False, progress: Progress | None = None) -> TrtBuildResult:
    """Build encoder and decoder engines from an ONNX pair or a checkpoint.

    Args:
        source: ``<name>_encoder.onnx``/``<name>_decoder.onnx`` (either one; its sibling is found), or a
            checkpoint, which is first exported to ONNX in ``output_dir``.
        output_dir: where engines go (default: next to the ONNX files).
        variant: model variant, needed for checkpoints.
        name: file stem of the outputs (default: the ONNX pair's name).
        precision: ``"fp32"`` or ``"fp16"``.
        points: decoder optimisation profile for the number of points.
        workspace_gib: optional builder workspace limit.
        check_parity: compare both engines with ONNX Runtime on fixed inputs.
        tolerance: max abs difference allowed (default per precision, :data:`DEFAULT_TOLERANCE`).
        verbose: TensorRT verbose logging.
        progress: progress reporter.

    Raises:
        MissingDependencyError: tensorrt or a CUDA GPU is missing (checked before any work).
        ExportParityError: engines written but outside tolerance (files and sidecars are kept).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    trt = require_tensorrt_gpu()
    progress = progress or NullProgress()
    # No onnxsim: some versions fuse an opset-23 Attention op into opset-17 graphs, which parsers reject.
    # A portable graph from a checkpoint: opset 17, which every TensorRT 10 parser takes.
    pair: OnnxPair = resolve_onnx_pair(source, output_dir, variant=variant, simplify=False, progress=progress,
                                       portable=True)
    out_dir = Path(output_dir) if output_dir else pair.encoder.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or pair.name
    engines: dict[str, Path] = {}
    metas: dict[str, dict[str, Any]] = {}
    task = progress.add_task(f"TensorRT {precision} engines", total=2)
    for role, onnx_path in (("encoder", pair.encoder), ("decoder", pair.decoder)):
        engine = out_dir / f"{stem}_{role}_{precision}.engine"
        progress.log(f"building {engine.name} (TensorRT {trt.__version__}) ...")
        metas[role] = build_engine(trt, onnx_path, engine, precision=precision, points=points,
                                   workspace_gib=workspace_gib, verbose=verbose)
        engines[role] = engine
        progress.advance(task)
    progress.finish(task)

    # Sidecars first (the runners read the output order from them), parity added afterwards.
    metas_full: dict[str, dict[str, Any]] = {}
    sidecars = {}
    onnx = deps.require("onnx", purpose="reading ONNX graphs")
    for role, engine in engines.items():
        outputs = [o.name for o in onnx.load(str(pair.path(role)), load_external_data=False).graph.output]
        metas_full[role] = {**pair.metadata, "role": role, **metas[role], "source_onnx": pair.path(role).name,
                            "output_order": outputs, "pair": {r: p.name for r, p in engines.items()},
                            "library_versions": library_versions()}
        sidecars[role] = write_engine_sidecar(engine, metas_full[role])
    parity = None
    if check_parity:
        from edgesam_core.inference.trt_predictor import TrtRunner

        limit = default_tolerance(pair, DEFAULT_TOLERANCE[precision]) if tolerance is None else float(tolerance)
        runners = {role: TrtRunner(path) for role, path in engines.items()}
        parity = compare_with_onnxruntime(pair, runners, tolerance=limit, precision=FLOOR_PRECISION[precision])
        for role, engine in engines.items():
            sidecars[role] = write_engine_sidecar(engine, {**metas_full[role],
                                                           "parity": parity.for_graph(role).to_dict()})
    result = TrtBuildResult(engines, sidecars, parity.to_dict() if parity is not None else None,
                            {"encoder": pair.encoder, "decoder": pair.decoder})
    if parity is not None and not parity.passed:
        worst = parity.worst
        raise ExportParityError(f"TensorRT {precision} engines are outside the noise-floor rule: "
                                f"{parity.describe(worst)}; engines kept in {out_dir}")
    return result
