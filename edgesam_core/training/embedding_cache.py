"""Image embeddings of a frozen encoder, computed once and kept on disk (float16), for fine-tuning at prompt speed.

Layout: ``<root>/<encoder fingerprint>/<image sha256[:24]>.npy`` (``C x g x g`` float16). The fingerprint hashes
the encoder's weights, the variant and the input size, so embeddings of other weights are never reused; the
image key hashes the file's bytes, so a changed photo is encoded again. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def encoder_fingerprint(model: Any) -> str:
    """SHA-256 (hex, 16 chars) of the image encoder's parameters and buffers, the variant and the input size."""
    digest = hashlib.sha256(f"{getattr(model, 'variant', '?')}:{int(model.img_size)}".encode())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(path: str | Path) -> str:
    """SHA-256 (hex, 24 chars) of an image file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


class EmbeddingCache:
    """``get(path, image)`` -> the ``1 x C x g x g`` float32 embedding of an image, encoded once per weights.

    Attributes:
        hits, misses: lookups served from disk / encoded.
        encode_seconds: time spent encoding misses.
    """

    def __init__(self, root: str | Path, model: Any) -> None:
        self.model = model
        self.folder = Path(root) / encoder_fingerprint(model)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self.encode_seconds = 0.0

    def path_for(self, image_path: str | Path) -> Path:
        return self.folder / f"{image_key(image_path)}.npy"

    @torch.no_grad()
    def get(self, image_path: str | Path, image: Any) -> torch.Tensor:
        """The embedding of ``image`` (``HxWx3`` uint8, or a callable returning it) read from ``image_path``."""
        import time

        from edgesam_core.data.transforms import ResizeLongestSide

        target = self.path_for(image_path)
        if target.is_file():
            try:
                self.hits += 1
                return torch.from_numpy(np.load(target).astype(np.float32))[None]
            except (OSError, ValueError):
                target.unlink(missing_ok=True)  # a damaged entry of ours: encode again
                self.hits -= 1
        start = time.perf_counter()
        pixels = image() if callable(image) else image
        resized = ResizeLongestSide(int(self.model.img_size)).apply_image(np.ascontiguousarray(pixels))
        tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
        device = self.model.pixel_mean.device
        features = self.model.encode_image(self.model.preprocess(tensor.to(device)))
        if isinstance(features, tuple):
            features = features[0]
        embedding = features.float().cpu()
        tmp = target.with_name(target.stem + ".tmp.npy")
        np.save(tmp, embedding[0].numpy().astype(np.float16))
        os.replace(tmp, target)
        self.misses += 1
        self.encode_seconds += time.perf_counter() - start
        return embedding.to(torch.float16).float()  # what a later hit returns

    def size_bytes(self) -> int:
        """Bytes on disk for this encoder's embeddings."""
        return sum(p.stat().st_size for p in self.folder.glob("*.npy"))


class FreshEmbeddings:
    """The :class:`EmbeddingCache` interface for an encoder that trains (LoRA): every ``get`` encodes anew, with
    autograd when ``grad`` is set; nothing is written."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.folder: Path | None = None  # nothing on disk
        self.hits = self.misses = 0
        self.encode_seconds = 0.0
        self.grad = False

    def get(self, image_path: str | Path, image: Any) -> torch.Tensor:
        import time

        from edgesam_core.data.transforms import ResizeLongestSide

        start = time.perf_counter()
        pixels = image() if callable(image) else image
        resized = ResizeLongestSide(int(self.model.img_size)).apply_image(np.ascontiguousarray(pixels))
        tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float().to(self.model.pixel_mean.device)
        with torch.set_grad_enabled(self.grad):
            features = self.model.encode_image(self.model.preprocess(tensor))
        self.misses += 1
        self.encode_seconds += time.perf_counter() - start
        return features[0] if isinstance(features, tuple) else features

    def size_bytes(self) -> int:
        return 0
