"""TeacherEmbeddingCache: fp16 round trip, memmap reads, atomic files, stale-cache detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam_core.data.teacher_cache import TeacherEmbeddingCache, preprocessing_signature
from edgesam_core.errors import DatasetError


def _cache(root, **overrides):
    kwargs = {"teacher": "vit_h", "checkpoint_hash": "a" * 64, "preprocessing": preprocessing_signature(1024)}
    kwargs.update(overrides)
    return TeacherEmbeddingCache(root, **kwargs)


def test_round_trip_memmap_and_layout(tmp_path):
    cache = _cache(tmp_path)
    emb = np.random.default_rng(0).standard_normal((256, 8, 8)).astype(np.float32)
    assert not cache.has("sa_1")
    cache.write("sa_1", emb)
    cache.write("sa_2", torch.from_numpy(emb * 2))
    assert cache.has("sa_1") and cache.ids() == ["sa_1", "sa_2"] and len(cache) == 2
    got = cache.read("sa_1")
    assert isinstance(got, np.memmap) and got.dtype == np.float16 and got.shape == (256, 8, 8)
    assert np.allclose(got, emb, atol=2e-3, rtol=1e-3), "fp16 storage: error below fp16 resolution"
    assert (tmp_path / "vit_h" / "sa_1.npy").is_file()
    assert np.load(tmp_path / "vit_h" / "sa_2.npy", mmap_mode="r").shape == (256, 8, 8)
    assert not [p for p in (tmp_path / "vit_h").iterdir() if p.name.endswith(".tmp")]
    manifest = json.loads((tmp_path / "vit_h" / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == "a" * 64 and manifest["shape"] == [256, 8, 8]
    assert manifest["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    assert manifest["format_version"] == 1
    reopened = _cache(tmp_path)
    assert reopened.shape == (256, 8, 8) and np.array_equal(reopened.read("sa_2"), cache.read("sa_2"))


def test_stale_cache_is_refused_with_the_fix(tmp_path):
    _cache(tmp_path).write("sa_1", np.zeros((4, 2, 2)))
    with pytest.raises(DatasetError, match=r"checkpoint_sha256=aaaa.*--rebuild"):
        _cache(tmp_path, checkpoint_hash="b" * 64)
    with pytest.raises(DatasetError, match="preprocessing"):
        _cache(tmp_path, preprocessing=preprocessing_signature(512))
    rebuilt = _cache(tmp_path, checkpoint_hash="b" * 64, rebuild=True)
    assert len(rebuilt) == 0 and rebuilt.shape is None
    with pytest.raises(DatasetError, match="shape"):
        rebuilt.write("sa_1", np.zeros((4, 2, 2)))
        rebuilt.write("sa_2", np.zeros((4, 3, 3)))


def test_orphan_files_missing_entries_and_bad_ids(tmp_path):
    folder = tmp_path / "vit_h"
    folder.mkdir()
    np.save(folder / "sa_9.npy", np.zeros((1, 1, 1), np.float16))
    with pytest.raises(DatasetError, match="no manifest.json"):
        _cache(tmp_path)
    cache = _cache(tmp_path, teacher="vit_h_debug")
    with pytest.raises(DatasetError, match="step 0"):
        cache.read("sa_404")
    with pytest.raises(DatasetError, match="file name"):
        cache.write("../escape", np.zeros((1, 1, 1)))
    (tmp_path / "vit_h_debug" / "sa_1.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="damaged"):
        cache.read("sa_1")


def test_read_is_copy_on_write(tmp_path):
    cache = _cache(tmp_path)
    cache.write("sa_1", np.ones((2, 2, 2)))
    view = cache.read("sa_1")
    view[0] = 5  # a writable view for torch, but the file keeps its values
    assert np.load(tmp_path / "vit_h" / "sa_1.npy").max() == 1.0
    assert torch.as_tensor(cache.read("sa_1")).dtype == torch.float16
