"""The frozen teacher, kept outside DDP (spec §3.2, §3.6, §3.8).

One object serves every step: image embeddings from the step-0 cache or computed online by the SAM ViT
encoder, and the SAM (or HQ-SAM) prompt encoder + mask decoder run on those embeddings. Parameters never
require grad, the module stays in eval mode and everything runs under ``torch.no_grad``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgesam_core.errors import ConfigError, DatasetError


def split_features(out: Any) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``(embedding, interm)`` from an image-encoder output (a tensor, or a tuple for HQ models)."""
    if isinstance(out, (tuple, list)):
        return out[0], list(out[1])
    return out, None


def file_fingerprint(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a checkpoint file; ties cached embeddings to the exact teacher weights."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class Teacher:
    """Frozen SAM teacher.

    Args:
        variant: teacher registry name (``vit_h``, ``vit_h_hq`` or a ``*_debug`` stand-in).
        checkpoint: teacher weights (SAM / HQ-SAM format, strictly loaded).
        device: where the teacher runs.
        embeddings: ``online`` (always run the ViT), ``cache`` (every image must be cached) or ``auto``.
        cache_dir: step-0 cache folder (edgesam's format, or one written by upstream's ``save_embedding.py``,
            recognised by its ``rank<r>-keys.txt`` files), or None.
        keep_encoder: build the ViT encoder even in ``cache`` mode (step 0 needs it).
        embedding_shape: ``CxHxW`` of the embeddings the student learns (upstream records are read in this
            shape); default: the teacher's own.
    """

    def __init__(self, variant: str, checkpoint: str | Path, device: torch.device, embeddings: str = "auto",
                 cache_dir: str | Path | None = None, keep_encoder: bool = False,
                 embedding_shape: tuple[int, int, int] | None = None) -> None:
        from edgesam_core.models import build_sam

        if checkpoint is None:
            raise ConfigError("The teacher needs weights: pass --teacher-checkpoint (e.g. sam_vit_h_4b8939.pth).")
        if not Path(checkpoint).is_file():
            raise ConfigError(f"Teacher checkpoint not found: {checkpoint}")
        self.variant = variant
        self.device = device
        self.mode = embeddings
        self.sam = build_sam(variant, checkpoint=checkpoint, device="cpu")
        self._img_size = int(self.sam.img_size)
        self.cache: Any = None
        if cache_dir is not None and embeddings != "online":
            from edgesam_core.data.upstream_teacher_cache import UpstreamTeacherCache, find_upstream_cache

            if find_upstream_cache(cache_dir) is not None:
                pe = self.sam.prompt_encoder
                shape = embedding_shape or (int(pe.embed_dim), *map(int, pe.image_embedding_size))
                self.cache = UpstreamTeacherCache(cache_dir, shape)
            else:
                # Hashing a 2.5 GB checkpoint takes seconds: only done when a cache is involved.
                self.cache = _open_cache(cache_dir, variant, file_fingerprint(checkpoint), self._img_size)
        if embeddings == "cache" and not keep_encoder:
            # Cached embeddings make the ViT (most of the teacher's memory) unnecessary.
            self.sam.image_encoder = nn.Identity()
        self.sam.to(device).eval()
        for p in self.sam.parameters():
            p.requires_grad_(False)

    @property
    def img_size(self) -> int:
        """Input side of the teacher (1024, or 128 for debug variants)."""
        return self._img_size

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Teacher weights (for copying the prompt encoder / decoder into a student)."""
        return self.sam.state_dict()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, autocast: Any = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Run the teacher ViT on preprocessed ``Bx3xSxS`` images; returns fp32 (embedding, interm)."""
        ctx = autocast if autocast is not None else torch.autocast(self.device.type, enabled=False)
        with ctx:
            emb, interm = split_features(self.sam.image_encoder(images.to(self.device)))
        return emb.float(), ([t.float() for t in interm] if interm is not None else None)

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor, keys: Sequence[str], autocast: Any = None) -> torch.Tensor:
        """Teacher embeddings ``Bx256xGxG`` (fp32) from the cache where available, else online."""
        cached = [self.cache.read(k) if self.cache is not None and self.cache.has(k) else None for k in keys]
        missing = [i for i, c in enumerate(cached) if c is None]
        if missing and self.mode == "cache":
            raise DatasetError(
                f"{len(missing)} image(s) (e.g. {keys[missing[0]]}) are not in the teacher cache; "
                "run `edgesam distill --step 0` first or set teacher_embeddings=auto."
            )
        if missing:
            fresh, _ = self.encode(images[missing], autocast)
            for j, i in enumerate(missing):
                cached[i] = fresh[j]
        # Cached entries are read-only float16 memory maps: copy, then move and widen.
        return torch.stack([c if isinstance(c, torch.Tensor) else torch.from_numpy(np.array(c)) for c in cached]
                           ).to(self.device, torch.float32)

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
               boxes: torch.Tensor | None, num_masks: int, interm: list[torch.Tensor] | None = None,
               image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher mask logits ``PxCxLxL`` and IoU ``PxC`` for P prompt sets on the images of ``embedding``.

        ``image_index`` (P ints) names each prompt set's image row; None: one image (``1xCxGxG``) for all.
        For an HQ teacher the logits are those of the HQ token.
        """
        out = run_decoder(self.sam, embedding, points, boxes, num_masks, interm, image_index)
        return out[0].float(), out[-1].float()


def run_decoder(sam: nn.Module, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
                boxes: torch.Tensor | None, num_masks: int, interm: list[torch.Tensor] | None = None,
                image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Prompt encoder + mask decoder of ``sam`` in one call for P prompt sets.

    ``embedding`` is ``BxCxGxG`` (and ``interm`` its early features); ``image_index`` gives each prompt set's
    image row, so a whole training batch, whatever its prompts per image, is one decoder call (None: SAM's
    pairing, e.g. one image for every prompt set). Returns the decoder's outputs: ``(masks, iou)``, or
    ``(hq_mask, sam_mask, iou)`` for HQ decoders.
    """
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    kwargs: dict[str, Any] = {"interm_embeddings": interm} if interm is not None else {}
    if image_index is not None:
        kwargs["image_index"] = image_index
    return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            num_multimask_outputs=num_masks, **kwargs)


def _open_cache(root: str | Path, variant: str, fingerprint: str, img_size: int) -> Any:
    from edgesam_core.data.teacher_cache import TeacherEmbeddingCache, preprocessing_signature

    return TeacherEmbeddingCache(root, teacher=variant, checkpoint_hash=fingerprint,
                                 preprocessing=preprocessing_signature(img_size))
