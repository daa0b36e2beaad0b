"""`edgesam evaluate` and `edgesam benchmark` end to end on the debug model (small runs)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from edgesam_cli.main import app

MODEL = "edge_sam_dyt_debug"


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_evaluate_cli_writes_report_plot_and_coco_results(debug_model_files, coco_root, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "eval"
    result = _invoke(["evaluate", "--checkpoint", str(debug_model_files["onnx"]), "--data", "coco", "--data-root",
                      str(coco_root), "--prompt", "point-center", "--refine-clicks", "1", "--num-samples", "1",
                      "--num-multimask-outputs", "3", "--multimask-select", "oracle", "--out", str(out),
                      "--save-masks"])
    assert "click" in result.output and "small" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 1 and report["num_prompts"] == 3 and len(report["clicks"]) == 2
    assert report["settings"]["data"] == "coco" and report["settings"]["multimask_select"] == "oracle"
    # The CLI's numbers are the library's on the same backend, data and settings.
    from edgesam_core.evaluation import evaluate, open_eval_dataset
    from edgesam_core.inference.artifact_loader import load_predictor

    library = evaluate(load_predictor(debug_model_files["onnx"]), open_eval_dataset("coco", coco_root, "val"),
                       prompt="point-center", refine_clicks=1, num_samples=1, num_multimask_outputs=3,
                       multimask_select="oracle")
    for k in (1, 2):
        assert report["clicks"][k - 1]["all"]["miou"] == pytest.approx(library.miou(k), abs=1e-4)  # JSON keeps 4 places
    assert (out / "miou_vs_clicks.png").read_bytes()[:4] == b"\x89PNG"
    gt = COCO(str(out / "coco_gt.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(out / "coco_results_click2.json")), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert len(evaluator.stats) == 12 and not math.isnan(evaluator.stats[0])


def test_evaluate_cli_reference_agreement_with_itself_is_100(debug_model_files, sa1b_root, tmp_path):
    result = _invoke(["evaluate", "--checkpoint", str(debug_model_files["onnx"]), "--reference",
                      str(debug_model_files["onnx"]), "--data-root", str(sa1b_root), "--refine-clicks", "0",
                      "--out", str(tmp_path), "--json"])
    report = json.loads(result.stdout)
    assert report["clicks"][0]["all"] == {"miou": 100.0, "count": 6}
    assert report["settings"]["target"] == "reference"


def test_evaluate_cli_reports_bad_input(debug_model_files, tmp_path):
    from edgesam_core.errors import DatasetError

    with pytest.raises(DatasetError):
        CliRunner().invoke(app, ["evaluate", "--checkpoint", str(debug_model_files["onnx"]), "--data-root",
                                 str(tmp_path)], catch_exceptions=False)
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(debug_model_files["onnx"]), "--data-root",
                                      str(tmp_path), "--prompt", "lasso"])
    assert result.exit_code == 2


def test_benchmark_cli_torch_and_onnx(tmp_path):
    import torch

    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    callers_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = _invoke(["benchmark", "--model", MODEL, "--backends", "torch,onnx,onnx-fp16", "--threads", "1",
                          "--runs", "3", "--warmup", "1", "--image-size", "96x64", "--out", str(out)])
        assert torch.get_num_threads() == 2  # --threads is for the run: the process's own count comes back
    finally:
        torch.set_num_threads(callers_threads)
    assert "random weights" in result.output
    report = json.loads(out.read_text())
    assert report["settings"]["weights"].startswith("random")
    for backend in ("torch", "onnx"):
        entry = report["backends"][backend]
        assert entry["status"] == "ok", entry
        for stage in ("encoder", "decoder", "end_to_end"):
            stats = entry[stage]
            assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
            # both are rounded to 3 decimals, and a sub-millisecond median makes that ~0.1 % of it
            assert stats["throughput_per_s"] == pytest.approx(1000 / stats["median_ms"], rel=1e-2)
            assert stats["peak_mem_mb"] is None or stats["peak_mem_mb"] >= 0
    assert report["backends"]["onnx-fp16"]["status"] in ("ok", "skipped", "failed")


def test_benchmark_cli_rejects_unknown_backend():
    from edgesam_core.errors import ConfigError

    result = CliRunner().invoke(app, ["benchmark", "--model", MODEL, "--backends", "torch,tensorflow"])
    assert isinstance(result.exception, ConfigError) and "tensorflow" in str(result.exception)


def test_benchmark_of_an_onnx_artifact_skips_torch_with_a_reason(debug_model_files):
    from edgesam_core.benchmark import BenchmarkSettings, run_benchmark

    report = run_benchmark(BenchmarkSettings(model=MODEL, checkpoint=debug_model_files["onnx"], backends=("torch", "onnx"),
                                             threads=1, runs=2, warmup=0, image_hw=(32, 48))).to_dict()
    assert report["backends"]["torch"]["status"] == "skipped"
    assert "ONNX artifact" in report["backends"]["torch"]["reason"]
    assert report["backends"]["onnx"]["status"] == "ok"
    assert report["settings"]["weights"] == str(debug_model_files["onnx"])


def test_benchmark_without_cuda_fails_with_exit_code_3(monkeypatch):
    import torch

    from edgesam_core.benchmark import BenchmarkSettings, run_benchmark
    from edgesam_core.errors import MissingDependencyError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError) as info:
        run_benchmark(BenchmarkSettings(model=MODEL, device="cuda", backends=("torch",), runs=1))
    assert info.value.exit_code == 3


def test_evaluate_cli_pth_and_onnx_agree(debug_model_files, sa1b_root, tmp_path):
    reports = {}
    for backend in ("pth", "onnx"):
        result = _invoke(["evaluate", "--checkpoint", str(debug_model_files[backend]), "--model", MODEL,
                          "--data-root", str(sa1b_root), "--prompt", "point-center", "--refine-clicks", "2",
                          "--out", str(tmp_path / backend), "--json"])
        reports[backend] = json.loads(result.stdout)
    for torch_click, onnx_click in zip(reports["pth"]["clicks"], reports["onnx"]["clicks"]):
        for size in ("all", "small", "medium", "large"):
            assert onnx_click[size]["count"] == torch_click[size]["count"]
            # mIoU is x100 (JSON rounds to 4 decimals); the tolerance is 1e-4 on the IoU scale.
            assert abs(onnx_click[size]["miou"] - torch_click[size]["miou"]) / 100 <= 1e-4


def test_evaluate_cli_shards_under_torchrun_and_resumes(debug_model_files, sa1b_root, tmp_path):
    """RANK/WORLD_SIZE as torchrun sets them: rank 0 writes its image's results and no report; rank 1, finishing
    last, writes the report of the whole run; --resume then evaluates nothing again. --save-masks is refused."""
    args = ["evaluate", "--checkpoint", str(debug_model_files["onnx"]), "--data-root", str(sa1b_root),
            "--refine-clicks", "1", "--json"]
    whole = json.loads(_invoke([*args, "--out", str(tmp_path / "whole")]).stdout)
    out = tmp_path / "sharded"
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--out", str(out)], env={"RANK": "0", "WORLD_SIZE": "2"},
                          catch_exceptions=False)
    assert first.exit_code == 0 and "Shard 1/2: 1 images evaluated" in first.output
    assert not (out / "report.json").exists() and len(list((out / "images").glob("*.json"))) == 1
    second = runner.invoke(app, [*args, "--out", str(out)], env={"RANK": "1", "WORLD_SIZE": "2"},
                           catch_exceptions=False)
    assert second.exit_code == 0, second.output
    report = json.loads((out / "report.json").read_text())
    assert report["clicks"] == whole["clicks"] and report["num_images"] == 2 and report["computed_images"] == 1
    resumed = json.loads(_invoke([*args, "--out", str(out), "--resume"]).stdout)
    assert resumed["clicks"] == whole["clicks"] and resumed["computed_images"] == 0
    from edgesam_core.errors import ConfigError

    refused = runner.invoke(app, [*args, "--out", str(out), "--resume", "--save-masks"])  # the app, not main(): the
    assert isinstance(refused.exception, ConfigError) and "--save-masks" in str(refused.exception)  # error itself
