"""DDP on CPU: two gloo processes give the same parameters as one process on the concatenated batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from tests.training.conftest import STUDENT, TEACHER

# Settings that make the per-rank and the concatenated computation the same function: BatchNorm on running
# statistics (per-rank batch statistics differ by construction; CPU has no SyncBatchNorm) and, for step 3,
# no random refinement clicks (the prompt kind is already shared by all ranks).
COMMON = ["train.eval_bn=true", "train.warmup_epochs=0", "data.max_prompts=2", "optim.clip_grad=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(step: str, assets: dict, out: Path, batch: int, init: Path):
    from edgesam_core.config import load_config

    extra = {"data.root": str(assets["data"]), "out": str(out), "device": "cpu", "model.student": STUDENT,
             "model.teacher": TEACHER, "model.teacher_checkpoint": str(assets["teacher"]), "train.max_steps": 2,
             "teacher_embeddings": "online", "model.init": str(init)}
    sets = COMMON + [f"train.batch_size={batch}", "prompts.decode_iters=1"]
    return load_config(step, overrides=sets, extra=extra)


def _worker(rank: int, world: int, ports: list[int], assets: dict, out: str, init: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from edgesam_core.training.distill import run

    # Both steps in one spawn: starting Python + torch twice costs more than the training itself.
    for step, port in zip(STEPS, ports):
        os.environ["MASTER_PORT"] = str(port)
        run(_config(step, assets, Path(out), 2, Path(init)))


STEPS = ("1", "3")


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory) -> Path:
    import torch.multiprocessing as mp

    from edgesam_core.models import build_sam
    from edgesam_core.training.distill import run

    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(9)
    init = root / "init.pth"
    torch.save({"model": build_sam(STUDENT).state_dict()}, init)
    ports = [_free_port() for _ in STEPS]
    mp.start_processes(_worker, args=(2, ports, assets, str(root / "ddp"), str(init)), nprocs=2, join=True,
                       start_method="spawn")
    for step in STEPS:
        run(_config(step, assets, root / "single", 4, init))
    return root


@pytest.mark.parametrize("step", STEPS)
def test_two_gloo_processes_match_one_process_on_the_union(step, runs):
    a = torch.load(runs / "ddp" / f"step{step}" / "final.pth", weights_only=True)["model"]
    b = torch.load(runs / "single" / f"step{step}" / "final.pth", weights_only=True)["model"]
    start = torch.load(runs / "init.pth", weights_only=True)["model"]
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], start[k])]
    assert len(moved) > 20, "nothing trained"
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    # Rank 0 alone wrote the run directory: one metrics line per optimizer step.
    assert len((runs / "ddp" / f"step{step}" / "metrics.jsonl").read_text().splitlines()) == 2
