"""Read-only access to teacher-embedding caches written by upstream's ``save_embedding.py`` (spec §3.2).

Layout: ``<root>/logits_top256_epoch0/`` (or ``<root>`` itself) holds, per writer rank ``r``,
``rank<r>-keys.txt`` (one image file stem per line) and ``rank<r>-values.bin``: fixed-size records in key
order, each a 4-byte little-endian int32 seed followed by the ``CxHxW`` float16 embedding in C order
(256x64x64: 2,097,156 bytes per image). Such caches take hundreds of GPU-hours and 0.2-1.2 TB to build, so
distillation steps 1-joint read them in place: the values files are memory-mapped and an index
key -> (file, record) is built once from the keys files. A key may appear more than once (upstream's
sampler pads ranks); the first occurrence, in rank order, wins.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from edgesam_core.errors import DatasetError

#: Shape of one upstream record: SAM ViT-H's embedding of a 1024x1024 input.
RECORD_SHAPE: tuple[int, int, int] = (256, 64, 64)
SEED_BYTES = 4
_KEYS = re.compile(r"^rank(\d+)-keys\.txt$")
_EPOCH = re.compile(r"^logits_top\d+_epoch(\d+)$")


def record_bytes(shape: tuple[int, ...] = RECORD_SHAPE) -> int:
    """Bytes of one record: the int32 seed and the float16 embedding (2,097,156 for 256x64x64)."""
    return SEED_BYTES + 2 * math.prod(shape)


def _keys_files(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _KEYS.match(p.name))]
    return sorted(found)


def find_upstream_cache(root: str | Path) -> Path | None:
    """The folder holding upstream's ``rank*-keys.txt`` files under ``root``, or None if it is not one.

    ``root`` itself, or its ``logits_top<C>_epoch<e>`` subfolder: epoch 0 when there are several (every
    upstream recipe reads epoch 0 only, ``DISTILL.NO_RAND``).

    Raises:
        DatasetError: several epoch folders and none of them is epoch 0.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    if _keys_files(root):
        return root
    epochs = sorted((int(m.group(1)), p) for p in root.iterdir()
                    if p.is_dir() and (m := _EPOCH.match(p.name)) and _keys_files(p))
    if not epochs:
        return None
    if epochs[0][0] == 0 or len(epochs) == 1:
        return epochs[0][1]
    names = ", ".join(p.name for _, p in epochs)
    raise DatasetError(f"Upstream teacher cache {root} holds several epochs ({names}) and no epoch 0; "
                       "point data.cache_dir at the one to use")


class UpstreamTeacherCache:
    """Teacher embeddings from an upstream ``save_embedding.py`` cache, read in place (never written).

    Offers the reading side of :class:`~edgesam_core.data.teacher_cache.TeacherEmbeddingCache`
    (``has``/``read``/``ids``/``len``), so the trainer uses either without knowing which.

    Args:
        root: the cache folder (``.../logits_top256_epoch0``) or the folder above it.
        shape: ``CxHxW`` of one embedding; must match the student's embedding (256x64x64 for the real
            models).

    Raises:
        DatasetError: no upstream cache under ``root``, a keys file without its values file, or a values
            file whose size is not ``keys x record size`` (truncated copy, or another embedding shape).
    """

    read_only = True

    def __init__(self, root: str | Path, shape: tuple[int, ...] = RECORD_SHAPE) -> None:
        directory = find_upstream_cache(root)
        if directory is None:
            raise DatasetError(f"{root} is not an upstream teacher cache (no rank<r>-keys.txt in it or in its "
                               "logits_top256_epoch0 folder)")
        self.directory = directory
        self.shape = tuple(int(s) for s in shape)
        self.record_bytes = record_bytes(self.shape)
        self._values: list[Path] = []
        self._maps: dict[int, np.memmap] = {}
        self._index: dict[str, tuple[int, int]] = {}
        self.duplicates = 0
        for _, keys_path in _keys_files(directory):
            values = keys_path.with_name(keys_path.name.replace("-keys.txt", "-values.bin"))
            if not values.is_file():
                raise DatasetError(f"Upstream teacher cache file {values} is missing (its keys file "
                                   f"{keys_path.name} is there); copy it too or remove both")
            keys = keys_path.read_text(encoding="utf-8").splitlines()
            size = values.stat().st_size
            if size != len(keys) * self.record_bytes:
                raise DatasetError(
                    f"Upstream teacher cache file {values} holds {size:,} bytes but {keys_path.name} lists "
                    f"{len(keys):,} keys x {self.record_bytes:,} bytes (int32 seed + float16 "
                    f"{'x'.join(map(str, self.shape))}) = {len(keys) * self.record_bytes:,}; the copy is "
                    "truncated or the student's embedding shape differs from the cached one")
            number = len(self._values)
            self._values.append(values)
            for row, key in enumerate(keys):
                if key in self._index:
                    self.duplicates += 1
                else:
                    self._index[key] = (number, row)

    def __repr__(self) -> str:
        return f"UpstreamTeacherCache({str(self.directory)!r}, {len(self)} images, shape={self.shape})"

    def _record(self, image_id: str) -> np.ndarray:
        where = self._index.get(str(image_id))
        if where is None:
            raise DatasetError(f"{image_id} is not in the upstream teacher cache {self.directory}")
        number, row = where
        mapped = self._maps.get(number)
        if mapped is None:
            mapped = self._maps[number] = np.memmap(self._values[number], dtype=np.uint8, mode="r")
        start = row * self.record_bytes
        return mapped[start:start + self.record_bytes]

    def has(self, image_id: str) -> bool:
        """True when the embedding of ``image_id`` is cached."""
        return str(image_id) in self._index

    __contains__ = has

    def read(self, image_id: str) -> np.ndarray:
        """The cached ``CxHxW`` embedding of ``image_id`` as a new float32 array.

        Raises:
            DatasetError: not cached.
        """
        record = self._record(image_id)
        values = np.frombuffer(record, dtype="<f2", offset=SEED_BYTES)
        return values.reshape(self.shape).astype(np.float32)

    def seed(self, image_id: str) -> int:
        """The augmentation seed stored with ``image_id`` (upstream's datasets never use it, spec §3.2)."""
        return int(np.frombuffer(self._record(image_id), dtype="<i4", count=1)[0])

    def write(self, image_id: str, embedding: object) -> Path:
        """Refuse: upstream caches are only read here."""
        raise DatasetError(f"The upstream teacher cache {self.directory} is read-only and lacks {image_id}; "
                           "point data.cache_dir at a new folder to cache the missing images in edgesam's format")

    def ids(self) -> list[str]:
        """Sorted ids of every cached embedding."""
        return sorted(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        """Drop the memory maps (they are reopened on the next read)."""
        self._maps.clear()
