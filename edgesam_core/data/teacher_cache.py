"""On-disk cache of teacher image embeddings (distillation step 0), one ``.npy`` file per image.

Layout: ``<root>/<teacher>/<image_id>.npy`` (float16, ``CxHxW``, e.g. 256x64x64 = 2 MiB) plus
``<root>/<teacher>/manifest.json``, which records what produced the embeddings: teacher variant, checkpoint
SHA-256, preprocessing and format version. Opening a cache built with anything different raises
:class:`DatasetError` instead of silently training against stale targets. Plain ``.npy`` files (rather than
upstream's packed ``rank<r>-values.bin`` records) can be memory-mapped, written by many ranks at once, and
checked or deleted one image at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import DatasetError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def preprocessing_signature(img_size: int) -> dict[str, Any]:
    """The preprocessing the datasets apply, as recorded in a cache manifest."""
    from edgesam_core.data.transforms import PIXEL_MEAN, PIXEL_STD

    return {"img_size": int(img_size), "pixel_mean": [float(v) for v in PIXEL_MEAN],
            "pixel_std": [float(v) for v in PIXEL_STD], "resize": "longest_side_bilinear_antialias",
            "padding": "zero_bottom_right_after_normalize"}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class TeacherEmbeddingCache:
    """Per-image teacher embeddings stored as float16 ``.npy`` files.

    Args:
        root: cache root; embeddings go to ``root/<teacher>/``.
        teacher: teacher variant name (e.g. ``"vit_h"``).
        checkpoint_hash: SHA-256 (or another fingerprint) of the teacher checkpoint.
        preprocessing: description of the input preprocessing (a string or JSON-able dict, e.g.
            :func:`preprocessing_signature`).
        rebuild: delete whatever the folder holds and start empty.

    Raises:
        DatasetError: the folder holds a cache made with another teacher, checkpoint, preprocessing or
            format, or embeddings without a manifest.
    """

    def __init__(self, root: str | Path, teacher: str, checkpoint_hash: str, preprocessing: Any,
                 rebuild: bool = False) -> None:
        if not _SAFE_ID.match(teacher):
            raise DatasetError(f"Teacher name {teacher!r} cannot be used as a folder name")
        self.directory = Path(root) / teacher
        self.expected = {"format_version": FORMAT_VERSION, "teacher": teacher,
                         "checkpoint_sha256": str(checkpoint_hash),
                         "preprocessing": json.loads(json.dumps(preprocessing)), "dtype": "float16"}
        if rebuild and self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shape: tuple[int, ...] | None = None
        self._check_or_create_manifest()

    # -- manifest -----------------------------------------------------------------------------------
    def _check_or_create_manifest(self) -> None:
        path = self.directory / MANIFEST
        fix = f"delete {self.directory} or pass --rebuild"
        if not path.exists():
            if any(self.directory.glob("*.npy")):
                raise DatasetError(f"Teacher cache {self.directory} holds embeddings but no {MANIFEST}, so their "
                                   f"origin is unknown; {fix}")
            _atomic_write_text(path, json.dumps({**self.expected, "shape": None}, indent=1) + "\n")
            return
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"Teacher cache manifest {path} is unreadable ({exc}); {fix}") from exc
        for key, want in self.expected.items():
            have = found.get(key)
            if have != want:
                raise DatasetError(f"Teacher cache {self.directory} is stale: it was built with {key}="
                                   f"{_short(have)}, this run uses {key}={_short(want)}; {fix}")
        self.shape = tuple(found["shape"]) if found.get("shape") else None

    def _record_shape(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        _atomic_write_text(self.directory / MANIFEST, json.dumps({**self.expected, "shape": list(shape)},
                                                                 indent=1) + "\n")

    # -- entries ------------------------------------------------------------------------------------
    def path_of(self, image_id: str) -> Path:
        """The file that holds ``image_id``'s embedding."""
        image_id = str(image_id)
        if not _SAFE_ID.match(image_id):
            raise DatasetError(f"Image id {image_id!r} cannot be used as a cache file name")
        return self.directory / f"{image_id}.npy"

    def has(self, image_id: str) -> bool:
        """True when the embedding of ``image_id`` is cached."""
        return self.path_of(image_id).is_file()

    def read(self, image_id: str) -> np.ndarray:
        """The cached float16 ``CxHxW`` embedding of ``image_id``, memory-mapped.

        The map is copy-on-write: the file is never modified, yet the array is writable, so
        ``torch.as_tensor`` takes it without the read-only-array warning.

        Raises:
            DatasetError: not cached, or the file is damaged.
        """
        path = self.path_of(image_id)
        if not path.is_file():
            raise DatasetError(f"{image_id} is not in the teacher cache {self.directory}; run "
                               "`edgesam distill --step 0` first")
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"Teacher cache file {path} is damaged ({exc}); delete it and run step 0 "
                               "again") from exc
        if self.shape is not None and tuple(array.shape) != self.shape:
            raise DatasetError(f"Teacher cache file {path} has shape {tuple(array.shape)}, expected "
                               f"{self.shape}; delete it and run step 0 again")
        return array

    def write(self, image_id: str, embedding: Any) -> Path:
        """Store ``embedding`` (``CxHxW`` numpy array or CPU tensor) as float16, atomically.

        Raises:
            DatasetError: the shape differs from the embeddings already cached.
        """
        if hasattr(embedding, "detach"):
            embedding = embedding.detach().cpu().numpy()
        array = np.ascontiguousarray(np.asarray(embedding), dtype=np.float16)
        if array.ndim != 3:
            raise DatasetError(f"Teacher embeddings must be CxHxW, got shape {array.shape}")
        if self.shape is None:
            self._record_shape(tuple(array.shape))
        elif tuple(array.shape) != self.shape:
            raise DatasetError(f"Embedding of {image_id} has shape {array.shape}, but the cache holds "
                               f"{self.shape}; a different teacher? delete {self.directory} or pass --rebuild")
        path = self.path_of(image_id)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
        return path

    def ids(self) -> list[str]:
        """Sorted ids of every cached embedding."""
        return sorted(p.stem for p in self.directory.glob("*.npy"))

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.npy"))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
