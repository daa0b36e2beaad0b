"""UpstreamTeacherCache: reads save_embedding.py's rank<r>-keys.txt / rank<r>-values.bin records in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgesam_core.data.upstream_teacher_cache import (
    RECORD_SHAPE,
    UpstreamTeacherCache,
    find_upstream_cache,
    record_bytes,
)
from edgesam_core.errors import DatasetError

SHAPE = (4, 3, 2)


def write_upstream_cache(folder: Path, ranks: dict[int, list[tuple[str, int, np.ndarray]]]) -> Path:
    """Write upstream's layout with plain numpy: per rank, keys one per line and (int32 seed, fp16 CxHxW)
    records back to back, little-endian, C order."""
    folder.mkdir(parents=True, exist_ok=True)
    for rank, entries in ranks.items():
        (folder / f"rank{rank}-keys.txt").write_text("".join(f"{key}\n" for key, _, _ in entries))
        with open(folder / f"rank{rank}-values.bin", "wb") as fh:
            for _, seed, embedding in entries:
                fh.write(np.asarray([seed], dtype="<i4").tobytes())
                fh.write(np.ascontiguousarray(embedding, dtype="<f2").tobytes())
    return folder


def _embedding(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, shape).astype(np.float16)


def test_record_size_of_the_real_cache():
    assert RECORD_SHAPE == (256, 64, 64) and record_bytes() == 2_097_156


def test_exact_values_seeds_and_duplicates_first_wins(tmp_path):
    embs = {k: _embedding(i) for i, k in enumerate(["sa_1", "sa_2", "sa_3", "sa_dup"])}
    # sa_dup is written by both ranks (sampler padding) with different contents: rank 0's copy wins.
    root = write_upstream_cache(tmp_path / "teacher_embed" / "logits_top4_epoch0", {
        0: [("sa_1", 11, embs["sa_1"]), ("sa_dup", 5, embs["sa_dup"]), ("sa_1", 99, embs["sa_3"])],
        1: [("sa_2", -7, embs["sa_2"]), ("sa_dup", 6, -embs["sa_dup"]), ("sa_3", 3, embs["sa_3"])],
    }).parent
    cache = UpstreamTeacherCache(root, SHAPE)
    assert cache.directory.name == "logits_top4_epoch0"
    assert cache.ids() == ["sa_1", "sa_2", "sa_3", "sa_dup"] and len(cache) == 4 and cache.duplicates == 2
    for key, emb in embs.items():
        got = cache.read(key)
        assert got.dtype == np.float32 and got.shape == SHAPE
        assert np.array_equal(got, emb.astype(np.float32)), key  # fp16 -> fp32 is exact
    assert [cache.seed(k) for k in ("sa_1", "sa_2", "sa_dup")] == [11, -7, 5]
    assert "sa_2" in cache and cache.has("sa_3") and not cache.has("sa_4")
    with pytest.raises(DatasetError, match="sa_4 is not in the upstream teacher cache"):
        cache.read("sa_4")
    with pytest.raises(DatasetError, match="read-only"):
        cache.write("sa_4", embs["sa_1"])
    cache.close()
    assert np.array_equal(cache.read("sa_2"), embs["sa_2"].astype(np.float32))  # maps reopen after close


def test_layout_detection(tmp_path):
    flat = write_upstream_cache(tmp_path / "flat", {0: [("a", 0, _embedding(0))]})
    assert find_upstream_cache(flat) == flat
    nested = tmp_path / "nested"
    write_upstream_cache(nested / "logits_top256_epoch1", {0: [("a", 0, _embedding(0))]})
    write_upstream_cache(nested / "logits_top256_epoch0", {0: [("b", 0, _embedding(1))]})
    assert UpstreamTeacherCache(nested, SHAPE).ids() == ["b"]  # upstream reads epoch 0 only
    ours = tmp_path / "ours" / "vit_h"
    ours.mkdir(parents=True)
    (ours / "sa_1.npy").write_bytes(b"")
    assert find_upstream_cache(tmp_path / "ours") is None and find_upstream_cache(tmp_path / "absent") is None
    with pytest.raises(DatasetError, match="not an upstream teacher cache"):
        UpstreamTeacherCache(tmp_path / "ours")
    odd = tmp_path / "odd"
    write_upstream_cache(odd / "logits_top256_epoch2", {0: [("a", 0, _embedding(0))]})
    write_upstream_cache(odd / "logits_top256_epoch3", {0: [("a", 0, _embedding(0))]})
    with pytest.raises(DatasetError, match="several epochs"):
        find_upstream_cache(odd)


def test_truncated_or_missing_values_file_is_one_line_naming_the_file(tmp_path):
    root = write_upstream_cache(tmp_path / "c", {0: [("a", 0, _embedding(0)), ("b", 1, _embedding(1))],
                                                1: [("c", 2, _embedding(2))]})
    values = root / "rank0-values.bin"
    values.write_bytes(values.read_bytes()[:-10])  # an interrupted copy
    with pytest.raises(DatasetError) as info:
        UpstreamTeacherCache(root, SHAPE)
    message = str(info.value)
    assert "\n" not in message and str(values) in message
    assert f"2 keys x {record_bytes(SHAPE)} bytes" in message and f"{2 * record_bytes(SHAPE) - 10} bytes" in message
    # The same complete file read with the wrong embedding shape fails the same check.
    write_upstream_cache(root, {0: [("a", 0, _embedding(0)), ("b", 1, _embedding(1))]})
    with pytest.raises(DatasetError, match="embedding shape differs"):
        UpstreamTeacherCache(root)  # default 256x64x64 records
    (root / "rank1-values.bin").unlink()
    with pytest.raises(DatasetError, match="rank1-values.bin is missing"):
        UpstreamTeacherCache(root, SHAPE)
