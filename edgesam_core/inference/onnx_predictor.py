"""``OnnxSamPredictor``: the ``SamPredictor`` API on exported ONNX graphs (fp32 or int8) run by onnxruntime.

Give it ``X_encoder.onnx``; the decoder is ``X_decoder.onnx`` beside it, and the staged decoder
(``X_decoder_image.onnx`` + ``X_decoder_prompts.onnx``) is used when it is there too. The predictor itself is
:class:`~edgesam_core.inference.exported_predictor.ExportedSamPredictor`; this module only opens sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesam_core.errors import InputError
from edgesam_core.inference.exported_predictor import (  # noqa: F401 - public names of this module
    MASK_THRESHOLD,
    PIXEL_MEAN,
    PIXEL_STD,
    STAGES,
    ExportedSamPredictor,
    pack_prompts,
    postprocess_masks,
    preprocess,
    resize_bilinear,
)

#: The input that names each role of an exported pair (upstream's I/O contract).
ROLE_INPUT = {"encoder": "image", "decoder": "image_embeddings"}


def create_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                   role: str | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` (CUDA first when that provider is installed).

    Args:
        path: ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's default).
        providers: explicit execution providers; default CUDA (if available) then CPU.
        role: ``"encoder"`` or ``"decoder"``: the graph must be that half of a SAM pair.

    Raises:
        InputError: the file is not an ONNX model onnxruntime can load, or is the other half of the pair.
    """
    from edgesam_core.deps import require

    ort = require("onnxruntime", purpose="running ONNX models")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    # The predictor alternates ONNX Runtime with torch (mask upscaling) and the encoder with the decoder:
    # a thread pool spinning after its run steals the cores the next one needs (measured: one click 40 ms
    # with spinning, see the benchmarks' predictor rows).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own InvalidProtobuf / Fail / InvalidGraph classes
        reason = " ".join(str(exc).split())[:160]
        raise InputError(f"{path} is not an ONNX model onnxruntime can load ({reason}); export it again with "
                         "'edgesam export-onnx'") from exc
    if role is not None:
        names = [i.name for i in session.get_inputs()]
        if ROLE_INPUT[role] not in names:
            other = "decoder" if role == "encoder" else "encoder"
            hint = (f"it looks like the {other} (inputs {', '.join(names[:3])}); were the files swapped?"
                    if ROLE_INPUT[other] in names else f"its inputs are {', '.join(names[:4]) or 'none'}")
            raise InputError(f"{path} is not a SAM {role} graph (no '{ROLE_INPUT[role]}' input): {hint}")
    return session


def decoder_path_for(encoder: str | Path) -> Path:
    """``X_encoder.onnx`` -> ``X_decoder.onnx`` (the naming ``edgesam export-onnx`` uses)."""
    encoder = Path(encoder)
    if not encoder.name.endswith("_encoder.onnx"):
        raise InputError(f"{encoder.name}: expected an encoder file named '<name>_encoder.onnx' "
                         "with '<name>_decoder.onnx' beside it (as written by 'edgesam export-onnx')")
    return encoder.with_name(encoder.name[: -len("_encoder.onnx")] + "_decoder.onnx")


class OnnxSamPredictor(ExportedSamPredictor):
    """:class:`ExportedSamPredictor` over onnxruntime sessions of an exported pair.

    Args:
        encoder_path: the encoder graph; the decoder is found beside it (``decoder_path`` overrides).
        decoder_path: explicit decoder graph.
        threads: intra-op threads for every session (None: onnxruntime's default).
        providers: onnxruntime execution providers (default CUDA if installed, then CPU).
    """

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path | None = None,
                 threads: int | None = None, providers: list[str] | None = None) -> None:
        encoder_path = Path(encoder_path)
        decoder_path = Path(decoder_path) if decoder_path else decoder_path_for(encoder_path)
        for path in (encoder_path, decoder_path):
            if not path.is_file():
                raise InputError(f"ONNX file not found: {path} (export one with 'edgesam export-onnx')")
        encoder = create_session(encoder_path, threads, providers, role="encoder")
        decoder = create_session(decoder_path, threads, providers, role="decoder")
        is_hq = len(encoder.get_outputs()) == 4
        staged = None
        stages = [decoder_path.with_name(decoder_path.name[: -len(".onnx")] + f"_{s}.onnx") for s in STAGES]
        if not is_hq and all(path.is_file() for path in stages):
            staged = (create_session(stages[0], threads, providers), create_session(stages[1], threads, providers))
        super().__init__(encoder, decoder, int(encoder.get_inputs()[0].shape[-1]), is_hq, staged=staged,
                         paths=(encoder_path, decoder_path))


def load_onnx_predictor(path: str | Path, model: str | None = None, device: str = "cpu",
                        **options: Any) -> OnnxSamPredictor:
    """``load_predictor`` factory for ``.onnx`` files: the encoder (or decoder) of an exported pair.

    ``model`` is ignored (the graphs define the model); ``device`` ``"cuda"`` asks for the CUDA provider.
    """
    path = Path(path)
    if path.name.endswith("_decoder.onnx"):
        path = path.with_name(path.name[: -len("_decoder.onnx")] + "_encoder.onnx")
    providers = None if str(device).startswith("cuda") else ["CPUExecutionProvider"]
    return OnnxSamPredictor(path, providers=providers, **options)
