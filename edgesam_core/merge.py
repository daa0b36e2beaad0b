"""Complete encoder-only (distillation step-1) checkpoints with SAM's prompt encoder and mask decoder.

Upstream's ``scripts/convert_weights.py --encoder-only`` prefixes a step-1 file's keys with
``image_encoder.`` and copies SAM ViT-H's prompt encoder and mask decoder next to them (spec §2.3). Here
that happens on load (``decoder_source`` of ``build_sam``), with :func:`decoder_source_for` choosing the
source for the CLI, or once and for all with :func:`merge_encoder_checkpoint` (``edgesam weights merge``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointMismatchError, InputError
from .progress import NullProgress, Progress

#: Published weights whose prompt encoder and mask decoder complete an encoder-only checkpoint by default.
DEFAULT_DECODER_WEIGHTS = "vit_h"
_TORCH_SUFFIXES = (".pth", ".pt")


def decoder_source_for(checkpoint: str | Path, decoder_from: str | Path | None = None,
                       progress: Progress | None = None) -> Path | None:
    """The decoder source to load ``checkpoint`` with, or None when it needs none.

    ``decoder_from`` wins when given (it is used only if the checkpoint is encoder-only). Otherwise an
    encoder-only PyTorch checkpoint gets SAM ViT-H's published weights, downloaded (with progress) into the
    weights cache when missing; one line is logged saying so. Exported artifacts and full checkpoints
    need nothing (``decoder_from`` is then ignored).

    Raises:
        DownloadError: SAM ViT-H is needed but cannot be fetched.
    """
    if Path(checkpoint).suffix.lower() not in _TORCH_SUFFIXES:
        return None  # exported graphs hold their decoder
    if decoder_from is not None:
        return Path(decoder_from)
    from .models.checkpoint import checkpoint_is_encoder_only

    if not checkpoint_is_encoder_only(checkpoint):
        return None
    from .weight_registry import ensure_weights, get_entry

    progress = progress or NullProgress()
    entry = get_entry(DEFAULT_DECODER_WEIGHTS)
    progress.log(f"{Path(checkpoint).name} is encoder-only: prompt encoder + mask decoder from {entry.filename} "
                 "(--decoder-from picks another)")
    return ensure_weights(DEFAULT_DECODER_WEIGHTS, progress=progress)


def variant_for(checkpoint: str | Path, default: str) -> str:
    """``default``, or for an encoder-only checkpoint the variant it completes to with SAM's decoder
    unchanged (``edge_sam``, ``edge_sam_dyt_frozen_mask``, or their ``*_debug`` forms)."""
    from .models.checkpoint import checkpoint_is_encoder_only, guess_variant, read_checkpoint

    if Path(checkpoint).suffix.lower() in _TORCH_SUFFIXES and checkpoint_is_encoder_only(checkpoint):
        return guess_variant(read_checkpoint(checkpoint)) or default
    return default


def merge_encoder_checkpoint(encoder: str | Path, decoder_from: str | Path, out: str | Path,
                             model: str | None = None) -> tuple[Path, str]:
    """Write ``encoder``'s image encoder + ``decoder_from``'s prompt encoder and mask decoder as one file.

    The result is a plain, prefixed full state dict that ``build_sam(model, out)`` loads unchanged. The
    model is built on the meta device, so only the two checkpoints' tensors take memory; the file is
    written atomically (``*.tmp`` then rename).

    Args:
        encoder: an encoder-only checkpoint (upstream step 1, prefixed or not).
        decoder_from: SAM's checkpoint (or any file holding fitting ``prompt_encoder.``/``mask_decoder.`` keys).
        out: the file to write.
        model: the variant of the result; by default recognised from the encoder (``edge_sam`` for the
            original layout, ``edge_sam_dyt_frozen_mask`` for a DyT encoder, which keeps SAM's LayerNorm
            decoder exactly as upstream's convert_weights.py does).

    Returns:
        The written path and the variant it loads as.

    Raises:
        InputError: ``out`` is one of the inputs.
        CheckpointError / CheckpointMismatchError: unreadable inputs, a full (not encoder-only) checkpoint,
            or parts that do not fit ``model``.
    """
    import torch

    from .models.build import _build_sam
    from .models.checkpoint import encoder_only_state, guess_variant, load_model_weights, read_checkpoint
    from .models.variants import resolve_variant

    out = Path(out)
    for given in (encoder, decoder_from):
        if out.exists() and Path(given).exists() and out.resolve() == Path(given).resolve():
            raise InputError(f"--out {out} would overwrite an input; choose another file name")
    state = read_checkpoint(encoder)
    if encoder_only_state(state) is None:
        raise CheckpointMismatchError(f"{encoder} is not an encoder-only checkpoint (it has "
                                      f"{sum(k.startswith(('prompt_encoder.', 'mask_decoder.')) for k in state)} "
                                      "prompt-encoder/decoder keys); it needs no merging, load it directly")
    variant = model or guess_variant(state)
    if variant is None:
        raise CheckpointMismatchError(f"cannot tell which model {encoder} belongs to; pass --model")
    spec = resolve_variant(variant)
    with torch.device("meta"):
        sam = _build_sam(spec)
    load_model_weights(sam, state, spec.name, decoder_source=decoder_from)
    merged = {k: v.detach().clone() for k, v in sam.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        torch.save(merged, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, spec.name
