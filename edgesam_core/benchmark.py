"""Latency, throughput and peak memory of the encoder, the decoder and one end-to-end segmentation.

Every backend is measured through the same predictor interface, so the numbers include what a user pays:
``encoder`` = ``set_image`` (resize, normalise, pad, image encoder), ``decoder`` = ``predict`` with one
point (prompt encoder, mask decoder, upscaling to the original size), ``end_to_end`` = both. Latency is
the median and 90th percentile over ``runs`` timed calls after ``warmup`` untimed ones. Memory is measured
in separate, untimed calls (so the sampler never disturbs the timings), once on the first call of a stage
(one-off growth: allocator arenas, caches) and once after the timed runs (steady state): peak resident-set
growth during the call on CPU (Linux's resettable high-water mark, or psutil sampling elsewhere) and
``torch.cuda.max_memory_allocated`` growth for PyTorch on CUDA. Random weights are fine: latency does not
depend on weight values.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, EdgeSamError, MissingDependencyError
from .progress import NullProgress, Progress

#: Backend names accepted by :func:`run_benchmark`.
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-fp16", "onnx-int8", "executorch", "executorch-int8")
STAGES: tuple[str, ...] = ("encoder", "decoder", "end_to_end")


@dataclass
class BenchmarkSettings:
    """What to measure (mirrors ``edgesam benchmark`` options)."""

    model: str = "edge_sam_dyt"
    checkpoint: Path | None = None
    backends: tuple[str, ...] = ("torch", "onnx")
    device: str = "cpu"
    threads: int | None = 2
    runs: int = 10
    warmup: int = 3
    image_hw: tuple[int, int] = (768, 1024)
    seed: int = 0
    calib_dir: Path | None = None
    """Calibration images for ``onnx-int8`` (seeded noise images when None: latency only)."""
    work_dir: Path | None = None
    """Where on-the-fly ONNX exports go (a temporary folder, removed afterwards, when None)."""


@dataclass
class BenchmarkReport:
    """Per-backend results; ``backends[name]["status"]`` is ``ok``, ``skipped`` or ``failed`` (with a reason)."""

    settings: dict[str, Any]
    environment: dict[str, Any]
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "environment": self.environment, "backends": self.backends}


# -- memory -------------------------------------------------------------------------------------------


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def peak_rss_delta_mb(fn: Callable[[], Any]) -> tuple[float | None, str]:
    """Run ``fn`` once and return (peak RSS growth in MiB during the call, method used)."""
    if _reset_peak_rss():
        before = _proc_status_kb("VmRSS") or 0
        fn()
        peak = _proc_status_kb("VmHWM") or before
        return max(peak - before, 0) / 1024.0, "VmHWM (Linux peak RSS, reset before the call)"
    try:
        import psutil
    except ImportError:
        fn()
        return None, "unavailable (install psutil)"
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - before) / 2**20, "psutil RSS sampled every 0.5 ms"


def _cuda_peak_mb(fn: Callable[[], Any]) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# -- timing -------------------------------------------------------------------------------------------


def summarize_latencies(seconds: list[float]) -> dict[str, float]:
    """Median, 90th percentile, mean and min in ms, and throughput (1 / median) per second."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    median = float(np.median(ms))
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "stdev_ms": round(statistics.pstdev(ms.tolist()), 3),
        "throughput_per_s": round(1000.0 / median, 3) if median > 0 else None,
    }


def _time(fn: Callable[[], Any], runs: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


# -- backends -----------------------------------------------------------------------------------------


def _build_torch_model(settings: BenchmarkSettings) -> Any:
    import torch

    from .models import build_sam

    torch.manual_seed(settings.seed)
    return build_sam(settings.model, checkpoint=settings.checkpoint, device=settings.device)


def _export_onnx(settings: BenchmarkSettings, work_dir: Path, cache: dict[str, Any]) -> Path:
    """The fp32 ``*_encoder.onnx`` for this run: the given artifact, or an export of the model made once."""
    if settings.checkpoint is not None and settings.checkpoint.suffix.lower() == ".onnx":
        return settings.checkpoint
    if "onnx" not in cache:
        from .export.onnx_export import OnnxExportOptions, export_onnx

        model = cache.get("model") or _build_torch_model(settings)
        cache["model"] = model
        opts = OnnxExportOptions(model_type=settings.model, out_dir=work_dir / "fp32", name=settings.model)
        cache["onnx"] = export_onnx(None, opts, model=model.to("cpu")).files["encoder"]
    return cache["onnx"]


def _convert_pair(encoder: Path, out_dir: Path, convert: Callable[[Any], Any]) -> Path:
    """Apply an ``onnx.ModelProto -> ModelProto`` conversion to an encoder/decoder pair."""
    from .deps import require
    from .inference.onnx_predictor import decoder_path_for

    onnx = require("onnx", purpose="converting ONNX graphs")
    out_dir.mkdir(parents=True, exist_ok=True)
    new_encoder = out_dir / encoder.name
    for src, dst in ((encoder, new_encoder), (decoder_path_for(encoder), decoder_path_for(new_encoder))):
        onnx.save(convert(onnx.load(str(src))), str(dst))
    return new_encoder


def _calibration_dir(settings: BenchmarkSettings, work_dir: Path, notes: list[str]) -> Path:
    """``settings.calib_dir``, or 4 seeded noise images (the graph and its latency are the same, but an
    artifact calibrated on them is for timing only)."""
    from PIL import Image

    if settings.calib_dir is not None:
        return settings.calib_dir
    calib_dir = work_dir / "calib"
    if not calib_dir.is_dir():
        calib_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(settings.seed)
        h, w = settings.image_hw
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(calib_dir / f"noise_{i}.png")
    notes.append("int8 calibrated on 4 synthetic noise images: valid for latency, not for accuracy "
                 "(pass --calib DIR to calibrate on real images)")
    return calib_dir


def _executorch_pair(backend: str, settings: BenchmarkSettings, work_dir: Path, cache: dict[str, Any],
                     notes: list[str]) -> Path:
    """The ``.pte`` encoder for ``executorch`` / ``executorch-int8``: the given program or an export made here."""
    if settings.checkpoint is not None and settings.checkpoint.suffix.lower() == ".pte":
        if backend == "executorch-int8":
            raise MissingDependencyError("the checkpoint is a .pte program; executorch-int8 needs a .pth to export")
        return settings.checkpoint
    from .export.executorch_export import ExecutorchOptions, export_executorch

    model = cache.get("model") or _build_torch_model(settings)
    cache["model"] = model
    int8 = backend == "executorch-int8"
    opts = ExecutorchOptions(out_dir=work_dir / "pte", name=settings.model, int8=int8, min_iou=0.0,
                             calib_dir=_calibration_dir(settings, work_dir, notes) if int8 else None,
                             calib_count=8, eval_count=1, prompts_per_image=1, threads=settings.threads or 2)
    return export_executorch(None, None, opts, model=model.to("cpu")).files["encoder"]


def _quantize_int8(encoder: Path, settings: BenchmarkSettings, work_dir: Path, notes: list[str]) -> Path:
    """Static int8 quantisation of the fp32 pair with the export helper's ``quantize_pair``.

    Without ``settings.calib_dir`` it calibrates on a few seeded noise images: the graph (and so the latency)
    is the same, but such an artifact is for timing only.
    """

    from .export.quantize import QuantizeOptions, quantize_pair

    calib_dir = _calibration_dir(settings, work_dir, notes)
    opts = QuantizeOptions(calib_dir=calib_dir, out_dir=work_dir / "int8", max_calib=8, max_eval=1,
                           prompts_per_image=1, threads=settings.threads or 2, latency_runs=1, warmup_runs=0,
                           seed=settings.seed)
    return Path(quantize_pair(encoder, opts).int8_encoder)


def _make_predictor(backend: str, settings: BenchmarkSettings, work_dir: Path, cache: dict[str, Any],
                    notes: list[str]) -> Any:
    if backend == "torch":
        from .inference.predictor import SamPredictor

        if settings.checkpoint is not None and settings.checkpoint.suffix.lower() == ".onnx":
            raise MissingDependencyError("the checkpoint is an ONNX artifact; the torch backend needs a .pth")
        model = cache.get("model") or _build_torch_model(settings)
        cache["model"] = model
        return SamPredictor(model.to(settings.device))
    if backend.startswith("executorch"):
        from .inference.executorch_predictor import load_executorch_predictor

        encoder = _executorch_pair(backend, settings, work_dir, cache, notes)
        return load_executorch_predictor(encoder, device=settings.device, threads=settings.threads)
    from .inference.onnx_predictor import load_onnx_predictor

    encoder = _export_onnx(settings, work_dir, cache)
    if backend == "onnx-fp16":
        from .export.onnx_fp16 import convert_onnx_to_fp16

        encoder = _convert_pair(encoder, work_dir / "fp16", convert_onnx_to_fp16)
    elif backend == "onnx-int8":
        encoder = _quantize_int8(encoder, settings, work_dir, notes)
    return load_onnx_predictor(encoder, device=settings.device, threads=settings.threads)


def _no_sync() -> None:
    """CPU backends and onnxruntime return only when the work is done: nothing to wait for."""


def _measure(predictor: Any, backend: str, settings: BenchmarkSettings) -> dict[str, Any]:
    rng = np.random.default_rng(settings.seed)
    h, w = settings.image_hw
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    point, label = np.array([[w / 2, h / 2]], dtype=np.float32), np.array([1])
    on_cuda = settings.device.startswith("cuda")
    sync: Callable[[], None] = _no_sync
    if on_cuda and backend == "torch":
        import torch

        sync = torch.cuda.synchronize

    def encode() -> None:
        predictor.set_image(image)

    def decode() -> None:
        predictor.predict(point_coords=point, point_labels=label, num_multimask_outputs=1)

    def segment() -> None:
        encode()
        decode()

    def memory(fn: Callable[[], Any]) -> tuple[float | None, str]:
        if on_cuda and backend == "torch":
            return _cuda_peak_mb(fn), "torch.cuda.max_memory_allocated growth"
        return peak_rss_delta_mb(fn)

    result: dict[str, Any] = {"status": "ok"}
    # Stage order matters: the encoder stage runs first, so the decoder always has an embedding.
    for stage, fn in (("encoder", encode), ("decoder", decode), ("end_to_end", segment)):
        cold, method = memory(fn)  # first call: includes one-off allocations (arenas, caches)
        stats = summarize_latencies(_time(fn, settings.runs, settings.warmup, sync))
        warm, _ = memory(fn)  # steady state, after the timed runs
        stats["peak_mem_mb"] = None if warm is None else round(warm, 2)
        stats["first_call_peak_mem_mb"] = None if cold is None else round(cold, 2)
        stats["mem_method"] = method
        result[stage] = stats
    result["process_peak_rss_mb"] = _process_peak_rss_mb()
    result["load_average_1m"] = _load_average()
    return result


def _load_average() -> float | None:
    """1-minute system load average: a busy machine explains noisy or slow numbers."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _process_peak_rss_mb() -> float | None:
    """Peak RSS of the whole process so far (all backends measured before included)."""
    try:
        import resource
    except ImportError:
        return None
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if platform.system() == "Darwin" else 1024), 1)


def _environment(settings: BenchmarkSettings) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": _load_average(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    if settings.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(settings.device))
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _check_exported_model(checkpoint: Path | None) -> None:
    """Refuse a corrupt or swapped ONNX pair before any timing starts."""
    if checkpoint is None or Path(checkpoint).suffix.lower() != ".onnx":
        return
    from edgesam_core.inference.onnx_predictor import create_session, decoder_path_for

    encoder = Path(checkpoint)
    if encoder.name.endswith("_decoder.onnx"):
        encoder = encoder.with_name(encoder.name[: -len("_decoder.onnx")] + "_encoder.onnx")
    create_session(encoder, role="encoder")
    create_session(decoder_path_for(encoder), role="decoder")


def run_benchmark(settings: BenchmarkSettings, progress: Progress | None = None) -> BenchmarkReport:
    """Measure every requested backend; a backend that cannot run here is reported as skipped, with why.

    Args:
        settings: model, weights, backends, device, threads, runs and warm-up.
        progress: progress reporter (one task advanced per backend).

    Returns:
        A :class:`BenchmarkReport`.

    Raises:
        ConfigError: unknown backend names or non-positive runs.
    """
    import torch

    unknown = [b for b in settings.backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"Unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if settings.runs < 1 or settings.warmup < 0:
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0 (got {settings.runs} and {settings.warmup})")
    from .inference.artifact_loader import resolve_device

    resolve_device(settings.device)  # a missing GPU is an error for the whole run (exit code 3), not a skip
    callers_threads = torch.get_num_threads()
    try:  # the thread count is process-wide: the caller gets its own back
        if settings.threads:
            torch.set_num_threads(int(settings.threads))
        return _measure_backends(settings, progress or NullProgress())
    finally:
        torch.set_num_threads(callers_threads)


def _measure_backends(settings: BenchmarkSettings, progress: Progress) -> BenchmarkReport:
    """:func:`run_benchmark` once its settings are checked and its thread count is set."""
    _check_exported_model(settings.checkpoint)
    weights = (str(settings.checkpoint) if settings.checkpoint is not None
               else "random (seeded); latency does not depend on weight values")
    report = BenchmarkReport(
        settings={"model": settings.model, "weights": weights, "device": settings.device,
                  "threads": settings.threads, "runs": settings.runs, "warmup": settings.warmup,
                  "image_hw": list(settings.image_hw), "prompt": "1 point, 1 mask output",
                  "stages": {"encoder": "set_image: resize + normalise + pad + image encoder",
                             "decoder": "predict: prompt encoder + mask decoder + upscale to image size",
                             "end_to_end": "set_image + predict"}},
        environment=_environment(settings),
    )
    task = progress.add_task("Benchmarking", total=len(settings.backends))
    cache: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as tmp:
        work_dir = Path(settings.work_dir) if settings.work_dir else Path(tmp)
        for backend in settings.backends:
            progress.update(task, description=f"Benchmarking {backend}")
            try:
                start = time.perf_counter()
                notes: list[str] = []
                predictor = _make_predictor(backend, settings, work_dir, cache, notes)
                setup = time.perf_counter() - start
                result = _measure(predictor, backend, settings)
                result["setup_s"] = round(setup, 3)
                if notes:
                    result["notes"] = notes
            except MissingDependencyError as exc:
                result = {"status": "skipped", "reason": str(exc)}
                progress.log(f"{backend}: skipped ({exc})")
            except EdgeSamError as exc:
                if exc.exit_code == 2:  # the user's file or option is wrong: stop and say so
                    raise
                result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                progress.log(f"{backend}: failed ({exc})")
            report.backends[backend] = result
            progress.advance(task)
    progress.finish(task)
    return report
