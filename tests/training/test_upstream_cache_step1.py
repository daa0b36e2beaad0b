"""Step 1 trains from an upstream save_embedding.py cache exactly as from edgesam's own cache format."""

from __future__ import annotations

import math

import numpy as np

from edgesam_core.data.teacher_cache import TeacherEmbeddingCache, preprocessing_signature
from edgesam_core.models import resolve_variant
from edgesam_core.training.teacher import file_fingerprint
from tests.data.test_upstream_teacher_cache import write_upstream_cache
from tests.training.conftest import STUDENT, TEACHER, cli_args, invoke, read_metrics


def test_step1_loss_is_identical_from_an_upstream_cache(assets, tmp_path):
    spec = resolve_variant(STUDENT)
    shape = (spec.embed_dim, spec.embed_grid, spec.embed_grid)  # 32x8x8: the record size follows the student
    keys = [f"sa_{k}" for k in range(1, 5)]
    rng = np.random.default_rng(0)
    embeddings = {k: rng.normal(0, 1, shape).astype(np.float16) for k in keys}

    ours = TeacherEmbeddingCache(tmp_path / "ours", TEACHER, file_fingerprint(assets["teacher"]),
                                 preprocessing_signature(spec.img_size))
    for key, emb in embeddings.items():
        ours.write(key, emb)
    # Upstream: two writer ranks, the padded sampler repeating an image on rank 1.
    write_upstream_cache(tmp_path / "upstream" / "logits_top256_epoch0", {
        0: [(k, 1000 + i, embeddings[k]) for i, k in enumerate(keys[:2])],
        1: [(k, 2000 + i, embeddings[k]) for i, k in enumerate(keys[2:] + keys[:1])],
    })

    losses = {}
    for name in ("ours", "upstream"):
        out = tmp_path / f"run_{name}"
        result = invoke(cli_args("1", assets, out, "--set", f"data.cache_dir={tmp_path / name}",
                                 "--set", "teacher_embeddings=cache", "--set", "train.warmup_epochs=0"))
        assert result.exit_code == 0, f"{name}: {result.output} {result.exception!r}"
        assert ("upstream cache" in result.output) == (name == "upstream"), result.output
        losses[name] = [r["loss"] for r in read_metrics(out / "step1") if "event" not in r]
    assert len(losses["ours"]) == 2 and all(math.isfinite(v) and v > 0 for v in losses["ours"])
    assert losses["upstream"] == losses["ours"]  # same embeddings, same seed: bit-identical training


def test_upstream_cache_missing_an_image_in_cache_mode_is_a_clear_error(assets, tmp_path):
    spec = resolve_variant(STUDENT)
    shape = (spec.embed_dim, spec.embed_grid, spec.embed_grid)
    write_upstream_cache(tmp_path / "upstream", {0: [("sa_1", 0, np.zeros(shape, np.float16))]})
    result = invoke(cli_args("1", assets, tmp_path / "run", "--set", f"data.cache_dir={tmp_path / 'upstream'}",
                             "--set", "teacher_embeddings=cache"))
    assert result.exit_code != 0 and "not in the teacher cache" in str(result.exception)
