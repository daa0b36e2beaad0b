"""``finetune`` under torch.distributed: two gloo processes split each epoch's steps, average gradients, stay in
step (identical weights on both ranks), and rank 0 alone writes the outputs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

VARIANT = "edge_sam_debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from edgesam_core.evaluation.samples import open_user_dataset
    from edgesam_core.models.task_prompt import prompt_path_fingerprint
    from edgesam_core.training.distributed import cleanup_distributed
    from edgesam_core.training.finetune import FinetuneOptions, finetune

    folder = Path(root)
    result = finetune(folder / "base.pth", open_user_dataset(folder / "data"), folder / "out",
                      FinetuneOptions(model_type=VARIANT, epochs=2, lr=1e-3))
    (folder / f"rank{rank}.json").write_text(json.dumps({"weights": prompt_path_fingerprint(result.model),
                                                         "history": result.history}))
    cleanup_distributed()


def test_two_gloo_processes_train_in_step(tmp_path):
    import torch.multiprocessing as mp

    from edgesam_core.models import build_sam
    from edgesam_core.models.task_prompt import prompt_path_fingerprint
    from tests.helpers.shapes_dataset import make_images, write_mask_folder

    torch.manual_seed(0)
    model = build_sam(VARIANT)
    torch.save(model.state_dict(), tmp_path / "base.pth")
    write_mask_folder(tmp_path / "data", make_images(12, seed=1))
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"], "the ranks' decoders diverged: gradients were not averaged"
    assert ranks[0]["weights"] != prompt_path_fingerprint(model), "nothing trained"
    assert len(ranks[0]["history"]) == 2 and ranks[1]["history"] == []  # rank 0 alone evaluates and writes
    report = json.loads((tmp_path / "out" / "finetune_report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    # Each rank encoded its own share of the images into the shared cache.
    assert len(list((tmp_path / "out" / "embeddings").rglob("*.npy"))) == 12
