"""Read every published checkpoint format safely and load it strictly, with a diagnosis when it does not fit.

Formats handled by :func:`read_checkpoint` (always ``torch.load(weights_only=True)``):

* a plain state dict (SAM, HQ-SAM, the original EdgeSAM releases);
* ``{"model": state_dict, ...}`` / ``{"state_dict": ...}`` wrappers (RepViT ImageNet weights);
* EdgeSAM-DyT training checkpoints, which also pickle a yacs ``CfgNode`` next to optimizer, scheduler and
  scaler states. yacs is not needed: ``yacs.config.CfgNode`` is allow-listed under its own name but resolved
  to a stand-in whose instances are plain ``OrderedDict`` objects (see :class:`_CfgNodeStandIn`).

:func:`load_model_weights` never loads partially: any missing, unexpected or mis-shaped key raises
:class:`CheckpointMismatchError` with counts, examples and the most likely cause (LayerNorm file into a DyT
model, HQ vs non-HQ, SAM ViT teacher, original EdgeSAM layout, encoder-only step-1 file, ...).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, CheckpointMismatchError
from .layers.dyt import DynamicTanh

Source = str | Path | Mapping[str, Any]
# A decoder source may be deferred (e.g. a download) until a checkpoint turns out to be encoder-only.
DecoderSource = Source | Callable[[], Source]

ENCODER, PROMPT, DECODER = "image_encoder.", "prompt_encoder.", "mask_decoder."
_ENCODER_ROOTS = ("features.", "neck.", "fuse_stage2.", "fuse_stage3.")
_HQ_MARKERS = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
_VIT_MARKERS = (ENCODER + "blocks.", ENCODER + "pos_embed", ENCODER + "patch_embed.")
_SHOWN = 3  # example keys per list in an error message


class _CfgNodeStandIn(dict):
    """Stands in for ``yacs.config.CfgNode`` while unpickling, without yacs.

    torch's weights-only unpickler looks a ``GLOBAL module.name`` up in the safe-globals list by that
    dotted name; a ``(object, "yacs.config.CfgNode")`` entry maps the name to this class. The unpickler
    then builds the node with ``cls.__new__(cls)`` (NEWOBJ), fills it with SETITEMS and applies the
    CfgNode's ``__dict__`` flags with BUILD. SETITEMS only accepts an exact ``dict``/``OrderedDict`` and
    BUILD on a plain dict would fail on the flags, so ``__new__`` hands back an ``OrderedDict``, whose
    instance ``__dict__`` harmlessly absorbs the flags. ``__init__`` is never called.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        return OrderedDict()


def _safe_globals() -> list[tuple[Any, str]]:
    """Globals a published checkpoint may reference, mapped by the dotted name its pickle uses.

    Besides the CfgNode stand-in: numpy scalars and dtypes, which training scripts sometimes store in
    ``max_accuracy``/scheduler states (numpy 1.x pickles them under ``numpy.core``, 2.x ``numpy._core``).
    """
    allowed: list[tuple[Any, str]] = [(_CfgNodeStandIn, "yacs.config.CfgNode")]
    try:
        import numpy as np
    except ImportError:
        return allowed
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                (np.dtype, "numpy.dtype")]
    for code in "?bhilqBHILQefdFD":  # numpy 2 builds each dtype through its own class
        kind = type(np.dtype(code))
        allowed.append((kind, f"{kind.__module__}.{kind.__qualname__}"))
    return allowed


def _describe(source: Source) -> str:
    return f"checkpoint {source}" if isinstance(source, (str, Path)) else "the given state dict"


def refused_object(exc: BaseException) -> str | None:
    """The Python object a ``weights_only`` load refused to unpickle, from torch's message (None if none)."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", text)
    if "Weights only load failed" in text and found:
        return found.group(1) or found.group(2)
    return None


def _load_file(path: str | Path) -> Any:
    """``torch.load`` with weights_only=True and one-line errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or download it with "
                              "'edgesam weights download'")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .pth/.pt file inside it")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_object(exc)
        if name:
            raise CheckpointError(f"checkpoint {path} pickles a Python object ({name}) that a safe load refuses; "
                                  "re-save only its state dict (torch.save(model.state_dict(), ...))") from exc
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint; re-download it") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError,
            AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint; re-download it") from exc


def _plain(value: Any) -> Any:
    """CfgNode stand-ins (OrderedDicts) and containers -> plain dicts/lists, recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return value


def read_checkpoint_full(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file as a dict, with a training checkpoint's ``config`` as plain nested dicts.

    A plain state dict comes back as ``{"model": state_dict}`` so callers (``--resume``) can always read
    ``["model"]``; ``optimizer``, ``lr_scheduler``, ``scaler``, ``epoch``, ``max_accuracy`` pass through.

    Raises:
        CheckpointError: missing, truncated, corrupt or not a checkpoint.
    """
    obj = _load_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; pass a model checkpoint")
    if "model" not in obj and "state_dict" not in obj:
        return {"model": extract_state_dict(obj, str(path))}
    full = dict(obj)
    full["model"] = extract_state_dict(obj, str(path))
    full.pop("state_dict", None)
    if "config" in full:
        full["config"] = _plain(full["config"])
    return full


def extract_state_dict(obj: Any, name: str = "the given state dict") -> dict[str, torch.Tensor]:
    """Unwrap ``model`` / ``state_dict`` entries and a DDP ``module.`` prefix; keep only tensors.

    Raises:
        CheckpointError: nothing in ``obj`` looks like model weights.
    """
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict; pass a model checkpoint")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        shown = ", ".join(list(map(str, obj))[:5])
        raise CheckpointError(f"{name} holds no model weights (top-level keys: {shown}); pass a model checkpoint")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(source: Source) -> dict[str, torch.Tensor]:
    """Return the state dict (CPU tensors) of any published checkpoint format, or of a given dict.

    Raises:
        CheckpointError: missing, truncated, corrupt, unsafe, or holds no weights.
    """
    if isinstance(source, Mapping):
        return extract_state_dict(source)
    return extract_state_dict(_load_file(source), str(source))


# -- key-set analysis --------------------------------------------------------------------------------

def is_encoder_only(keys: Iterable[str]) -> bool:
    """True for step-1 / ImageNet files: RepViT keys without the ``image_encoder.`` prefix."""
    keys = list(keys)
    return bool(keys) and not any(k.startswith((ENCODER, PROMPT, DECODER)) for k in keys) and any(
        k.startswith(_ENCODER_ROOTS) for k in keys)


def encoder_only_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The unprefixed RepViT weights of an encoder-only file, or None for any other file.

    Step-1 files come without the ``image_encoder.`` prefix (upstream) or with it but nothing else
    (an encoder extracted from a full model); both count.
    """
    if is_encoder_only(state):
        return dict(state)
    if state and all(k.startswith(ENCODER) for k in state) and any(
            k[len(ENCODER):].startswith(_ENCODER_ROOTS) for k in state):
        return {k[len(ENCODER):]: v for k, v in state.items()}
    return None


def checkpoint_is_encoder_only(path: str | Path) -> bool:
    """True when the file at ``path`` holds only RepViT image-encoder weights (a step-1 checkpoint).

    Memory-maps the file where torch can, so peeking at a large full checkpoint costs little.
    """
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        obj = _load_file(path)  # legacy (non-zip) files cannot be memory-mapped; this reports real errors
    state = extract_state_dict(obj, str(path))
    return encoder_only_state(state) is not None and not is_imagenet_repvit(state)


def is_imagenet_repvit(keys: Iterable[str]) -> bool:
    """True for RepViT's ImageNet classification weights (``features.*`` + ``classifier.*``)."""
    keys = list(keys)
    return is_encoder_only(keys) and any(k.startswith("classifier.") for k in keys)


def guess_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """Best guess of the registry variant a full-model state dict was saved from (None if unknown)."""
    encoder = encoder_only_state(state)
    if encoder is not None and not is_imagenet_repvit(encoder):
        # Step-1 file: the model it completes with SAM's decoder unchanged (LayerNorm), as upstream's
        # convert_weights.py builds it: edge_sam (original layout) or edge_sam_dyt_frozen_mask (DyT neck).
        state = {ENCODER + k: v for k, v in encoder.items()}
    keys = set(state)
    if any(k.startswith(_VIT_MARKERS) for k in keys):
        depth = 1 + max((int(k.split(".")[2]) for k in keys if k.startswith(ENCODER + "blocks.")), default=-1)
        name = {12: "vit_b", 24: "vit_l", 32: "vit_h"}.get(depth, "vit_b")
        if any(DECODER + m in k for k in keys for m in _HQ_MARKERS):
            name = "vit_h_hq"
    elif any(k.startswith(ENCODER + "features.") for k in keys):
        if any(k.endswith("token_mixer.0.conv1.c.weight") for k in keys):
            name = "edge_sam"
        elif any(k.startswith(DECODER) and k.endswith(".alpha") for k in keys):
            name = "edge_sam_dyt_hq" if any(DECODER + m in k for k in keys for m in _HQ_MARKERS) else "edge_sam_dyt"
        elif any(k.startswith(ENCODER + "neck.") and k.endswith(".alpha") for k in keys):
            name = "edge_sam_dyt_frozen_mask"
        else:
            return None  # LayerNorm model in the DyT layout: upstream K's edge_sam, not a registry variant
    else:
        return None
    tokens = state.get(DECODER + "mask_tokens.weight")
    neck = state.get(ENCODER + "neck.0.weight")
    width = tokens.shape[-1] if tokens is not None else (neck.shape[0] if neck is not None else 256)
    if width != 256:  # mask-token width (or, for an encoder-only file, the neck's output channels)
        name += "_debug"
    return name


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (", …" if len(keys) > _SHOWN else "")


def _diagnose(missing: list[str], unexpected: list[str], mismatched: list[str],
              state: Mapping[str, torch.Tensor], variant: str | None) -> str:
    """The most likely reason a checkpoint does not fit, phrased as what to do."""
    want = f"'{variant}'" if variant else "this model"
    guess = guess_variant(state)
    use = f"; it looks like variant '{guess}': pass --model {guess}" if guess and guess != variant else ""
    if guess and variant and guess != variant and guess.removesuffix("_debug") == variant.removesuffix("_debug"):
        return "same architecture, different size (a *_debug checkpoint into a full model, or the reverse)" + use
    if missing and all(k.endswith(".alpha") for k in missing) and not unexpected:
        return ("the checkpoint has LayerNorm where " + want + " has DyT (only DyT 'alpha' keys are missing): "
                "use the LayerNorm variant or convert the model with convert_ln_to_dyt before loading" + use)
    if unexpected and all(k.endswith(".alpha") for k in unexpected) and not missing:
        return f"the checkpoint has DyT layers where {want} has LayerNorm" + (use or ": pick the DyT variant")
    if any(k.startswith(_VIT_MARKERS) for k in unexpected):
        return "this is a SAM ViT (teacher) checkpoint, not EdgeSAM" + (use or ": pass --model vit_h")
    if any(k.startswith(_VIT_MARKERS) for k in missing) and any(
            k.startswith(ENCODER + "features.") for k in unexpected):
        return f"this is an EdgeSAM checkpoint but {want} is a SAM ViT" + (use or "")
    if any(k.endswith("token_mixer.0.conv1.c.weight") for k in unexpected):
        return (f"the checkpoint uses the original EdgeSAM layer layout (conv1.c/conv1.bn), {want} the EdgeSAM-DyT "
                "layout" + (use or ": pass --model edge_sam"))
    if any(k.endswith("token_mixer.0.conv1.c.weight") for k in missing):
        return (f"the checkpoint uses the EdgeSAM-DyT layer layout (conv1 + bn), {want} the original EdgeSAM layout"
                + (use or ": pass --model edge_sam_dyt"))
    if any(DECODER + m in k for k in unexpected for m in _HQ_MARKERS):
        return f"this is an HQ checkpoint but {want} has no HQ decoder" + (use or ": pick the *_hq variant")
    if any(DECODER + m in k for k in missing for m in _HQ_MARKERS):
        return f"{want} has an HQ decoder but the checkpoint has none" + (use or ": pick the non-HQ variant")
    if mismatched and not missing and not unexpected:
        return ("same layers, different sizes (a *_debug checkpoint into a full model, or the reverse)"
                + (use or ""))
    return f"the checkpoint was saved from a different model than {want}" + (use or "; check --model")


def compare_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                  ) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``key: ckpt shape vs model shape`` mismatches (each sorted)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: {list(state[k].shape)} vs {list(expected[k].shape)}"
        for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    return missing, unexpected, mismatched


def _mismatch_error(name: str, variant: str | None, missing: list[str], unexpected: list[str],
                    mismatched: list[str], state: Mapping[str, torch.Tensor]) -> CheckpointMismatchError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_examples(mismatched)})")
    target = f"model '{variant}'" if variant else "the model"
    hint = _diagnose(missing, unexpected, [m.split(":")[0] for m in mismatched], state, variant)
    return CheckpointMismatchError(f"{name} does not fit {target}: {'; '.join(parts)}; {hint}")


def _strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, variant: str | None,
                 allowed_missing: Iterable[str] = ()) -> None:
    expected = module.state_dict()
    missing, unexpected, mismatched = compare_state(expected, state)
    allowed = set(allowed_missing)
    missing = [k for k in missing if k not in allowed]
    if missing or unexpected or mismatched:
        raise _mismatch_error(name, variant, missing, unexpected, mismatched, state)
    on_meta = any(t.is_meta for t in expected.values())
    # A model built on the meta device (key checks, lazy init) takes the tensors over instead of copying.
    module.load_state_dict(dict(state), strict=not allowed, assign=on_meta)


def decoder_weights(model: nn.Module, source: Source, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The ``prompt_encoder.*`` / ``mask_decoder.*`` weights of ``source`` fitted to ``model``.

    ``source`` is typically SAM's checkpoint (any file holding those prefixed keys). SAM's LayerNorm
    weight/bias go into the DyT layers of the same name; their ``alpha`` starts at the layer's own
    ``alpha_init_value``, as :func:`~edgesam_core.models.layers.dyt.convert_ln_to_dyt` and the step-3
    initialisation do. HQ-SAM's extra decoder modules are dropped for a non-HQ model.

    Raises:
        CheckpointError: unreadable source.
        CheckpointMismatchError: the source has no decoder, or one of another width or kind.
    """
    name = f"decoder source {source}" if isinstance(source, (str, Path)) else "the decoder source"
    parts = (PROMPT, DECODER)
    donor = {k: v for k, v in read_checkpoint(source).items() if k.startswith(parts)}
    if not donor:
        raise CheckpointMismatchError(f"{name} holds no prompt_encoder./mask_decoder. weights; pass a SAM "
                                      "checkpoint such as sam_vit_h_4b8939.pth with --decoder-from")
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(parts)}
    for key, value in expected.items():
        weight = key.removesuffix("alpha") + "weight"
        if key.endswith(".alpha") and key not in donor and weight in donor:
            layer = model.get_submodule(key.removesuffix(".alpha"))
            if isinstance(layer, DynamicTanh):
                donor[key] = torch.full(tuple(value.shape), float(layer.alpha_init_value), dtype=donor[weight].dtype)
    hq_model = any(DECODER + m in k for k in expected for m in _HQ_MARKERS)
    if not hq_model:
        donor = {k: v for k, v in donor.items() if not any(DECODER + m in k for m in _HQ_MARKERS)}
    missing, unexpected, mismatched = compare_state(expected, donor)
    if not (missing or unexpected or mismatched):
        return donor
    found = [f"{len(missing)} missing keys ({_examples(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({_examples(unexpected)})" if unexpected else "",
             f"{len(mismatched)} shape mismatches ({_examples(mismatched)})" if mismatched else ""]
    if hq_model and any(DECODER + m in k for k in missing for m in _HQ_MARKERS):
        hint = "an HQ model's decoder cannot come from SAM; load a full checkpoint of the HQ model instead"
    elif mismatched:
        hint = ("its decoder has another width; use SAM's vit_h weights for full-size models (the debug "
                "models need a debug-size decoder)")
    else:
        hint = "pass a SAM checkpoint (sam_vit_h_4b8939.pth) or a full checkpoint of the same model family"
    target = f"'{variant}'" if variant else "the model"
    raise CheckpointMismatchError(f"{name} does not fit the prompt encoder / mask decoder of {target}: "
                                  f"{'; '.join(p for p in found if p)}; {hint}")


def load_model_weights(
    model: nn.Module,
    source: Source,
    variant: str | None = None,
    *,
    decoder_source: DecoderSource | None = None,
    encoder_only_ok: bool = False,
) -> None:
    """Load a checkpoint into a full ``Sam`` strictly; never a partial load.

    Args:
        model: the model (``image_encoder`` / ``prompt_encoder`` / ``mask_decoder``); may live on ``meta``.
        source: checkpoint path (any published format) or a state dict.
        variant: the model's registry name, used in messages and diagnoses.
        decoder_source: used only when ``source`` is encoder-only (distillation step 1): where the prompt
            encoder and mask decoder come from, e.g. SAM's ``sam_vit_h_4b8939.pth`` (what upstream's
            ``convert_weights.py`` merges in); see :func:`decoder_weights`. A zero-argument callable is
            called only then (e.g. to download SAM on demand).
        encoder_only_ok: load an encoder-only file into the image encoder and keep the model's own
            prompt encoder and decoder.

    Raises:
        CheckpointError: the file cannot be read.
        CheckpointMismatchError: keys or shapes do not fit; the message names the likely cause.
    """
    name = _describe(source)
    state = read_checkpoint(source)
    variant = variant or getattr(model, "variant", None)
    encoder = encoder_only_state(state)
    if encoder is not None:
        if is_imagenet_repvit(encoder):
            raise CheckpointMismatchError(
                f"{name} is RepViT's ImageNet classifier, not a segmentation model; use it as the encoder "
                "initialisation of distillation step 1 (load_image_encoder_weights), not with --checkpoint")
        if decoder_source is None and not encoder_only_ok:
            raise CheckpointMismatchError(
                f"{name} is an encoder-only checkpoint (distillation step 1, {len(state)} image-encoder keys); "
                "give the prompt encoder and mask decoder with --decoder-from SAM.pth (decoder_source=...), "
                "merge them once with 'edgesam weights merge', or load it with load_image_encoder_weights")
        merged = {ENCODER + k: v for k, v in encoder.items()}
        if decoder_source is not None:
            if callable(decoder_source):
                decoder_source = decoder_source()
            merged.update(decoder_weights(model, decoder_source, variant))
        else:
            merged.update({k: v for k, v in model.state_dict().items() if k.startswith((PROMPT, DECODER))})
        state = merged
    _strict_load(model, state, name, variant)


def load_image_encoder_weights(encoder: nn.Module, source: Source, variant: str | None = None) -> list[str]:
    """Load image-encoder weights from a full model, a step-1 file or RepViT's ImageNet file.

    Prefixed (``image_encoder.*``) and unprefixed keys are both accepted; prompt-encoder/decoder keys of a
    full checkpoint and the ImageNet ``classifier.*`` head are ignored. The ImageNet file has no fuse neck
    and neck: those keys keep their current values and are returned. Everything else is strict.

    Returns:
        The encoder keys that were expected to be missing (ImageNet init) and left untouched.

    Raises:
        CheckpointError / CheckpointMismatchError: unreadable file, or keys that do not fit.
    """
    name = _describe(source)
    state = read_checkpoint(source)
    if any(k.startswith(ENCODER) for k in state):
        state = {k[len(ENCODER):]: v for k, v in state.items() if k.startswith(ENCODER)}
    allowed: list[str] = []
    if is_imagenet_repvit(state):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        allowed = [k for k in encoder.state_dict() if k.startswith(("neck.", "fuse_stage2.", "fuse_stage3."))
                   and k not in state]
    _strict_load(encoder, state, name, variant, allowed_missing=allowed)
    return allowed
