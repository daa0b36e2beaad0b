"""Training throughput (images/s) of distillation steps 1 and 3 at full size, printed as JSON.

Student: ``edge_sam_dyt`` (1024 px), batch 2, fp32 on CPU (bf16 autocast on CUDA). Step 1 distils against a
random 256x64x64 embedding standing in for a cached ViT-H embedding (the cache read costs a 2 MB file read).
Step 3 runs the frozen student encoder and the prompt-in-the-loop loop (16 prompts per image, 2 decoder
iterations, point prompts with 4 masks) against a full-size SAM decoder teacher with random weights; the
teacher embedding is random too. Times cover forward, backward, clipping and the AdamW step; the first
``--warmup`` steps are excluded.

    python benchmarks/bench_distill.py --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def _bench_step(step: str, steps: int, warmup: int, batch: int, prompts: int, device: torch.device) -> dict:
    from edgesam_core.config import load_config
    from edgesam_core.models import build_sam
    from edgesam_core.training import student_init as weights
    from edgesam_core.training.engine import resolve_amp
    from edgesam_core.training.optim import build_optimizer
    from edgesam_core.training.steps import Batch, decoder_losses, encoder_losses

    torch.manual_seed(0)
    cfg = load_config(step, overrides=[f"train.batch_size={batch}", f"data.max_prompts={prompts}",
                                       "prompts.types=[point]"])
    student = build_sam("edge_sam_dyt").to(device)
    sam_decoder = build_sam("edge_sam_dyt_frozen_mask")  # LN decoder + prompt encoder == SAM's (random weights)
    teacher_parts = {k: v for k, v in sam_decoder.state_dict().items() if not k.startswith("image_encoder.")}
    size, grid = student.img_size, 64
    weights.initialise_student(student, step, None, teacher_parts)
    weights.freeze_for_step(student, step)
    weights.set_train_mode(student, step, cfg.train.eval_bn)
    opt = build_optimizer(student, cfg.optim, 1e-4)
    dtype = resolve_amp("auto", device)

    class _RandomTeacher:
        """Random embeddings (a cache read) + the full-size SAM prompt encoder/decoder."""

        def __init__(self) -> None:
            self.sam = sam_decoder.to(device).eval().requires_grad_(False)

        def embeddings(self, images, keys, autocast=None):
            return torch.randn(images.shape[0], 256, grid, grid, device=device)

        def decode(self, emb, points, boxes, num_masks, interm=None, image_index=None):
            from edgesam_core.training.teacher import run_decoder

            with torch.no_grad():
                out = run_decoder(self.sam, emb, points, boxes, num_masks, None, image_index)
            return out[0].float(), out[-1].float()

    teacher = _RandomTeacher()
    gen = torch.Generator().manual_seed(0)
    batch_obj = Batch(
        images=torch.randn(batch, 3, size, size, generator=gen).to(device),
        sizes=torch.tensor([[size, size * 3 // 4]] * batch, device=device),
        boxes=[torch.tensor([[100.0, 100.0, 600.0, 500.0]]).repeat(prompts, 1) for _ in range(batch)],
        points=[torch.randint(0, size * 3 // 4, (prompts, 1, 2), generator=gen).float() for _ in range(batch)],
        keys=[f"img{i}" for i in range(batch)],
    )
    fn = encoder_losses if step == "1" else decoder_losses
    ctx = {"autocast": torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
           "step": 1, "micro": 0}
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = fn(student, batch_obj, ctx, teacher=teacher, cfg=cfg)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], cfg.optim.clip_grad)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    mean = sum(times) / len(times)
    return {"step": step, "batch": batch, "prompts_per_image": prompts if step != "1" else None,
            "seconds_per_step": round(mean, 3), "images_per_s": round(batch / mean, 3),
            "loss": round(float(out["loss"].detach()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per distillation step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per image (step 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--which", nargs="+", default=["1", "3"], choices=["1", "3"])
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [_bench_step(s, args.steps, args.warmup, args.batch, args.prompts, device) for s in args.which]
    print(json.dumps({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
