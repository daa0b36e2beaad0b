"""A folder split over two real ``edgesam segment`` processes, as ``torchrun --nproc_per_node 2`` starts them.

Each process reads its rank from ``RANK``/``WORLD_SIZE`` (what torchrun sets), takes every second image, and
writes into the shared ``--out``; together they cover the folder once. A rerun with ``--resume`` skips it all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXECUTABLE = Path(sys.executable).with_name("edgesam")


def test_two_processes_share_a_folder_and_resume(tmp_path):
    import torch

    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    torch.save(build_sam("edge_sam_dyt_debug").state_dict(), tmp_path / "tiny.pth")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"

    def run(rank: int, *extra: str) -> subprocess.Popen:
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        return subprocess.Popen([str(EXECUTABLE), "segment", str(photos), "--point", "20,20", "--checkpoint",
                                 str(tmp_path / "tiny.pth"), "--out", str(out), *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [run(0), run(1)]  # concurrently, like torchrun's workers
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "p0.png" in outputs[0][0] and "p1.png" in outputs[1][0] and "p1.png" not in outputs[0][0]
    assert sorted(p.name for p in out.glob("*.json")) == [f"p{i}.json" for i in range(5)]
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    procs = [run(0, "--resume"), run(1, "--resume")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("complete earlier" in o[0] for o in outputs)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first  # nothing rewritten
    assert json.loads((out / "p3.json").read_text())["job"]["prompts"]["points"] == [[20.0, 20.0]]
