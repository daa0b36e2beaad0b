"""The mask postprocessing benchmark checks its outputs equal upstream's and reports a ratio per case; the
shared round runner visits every case once per round in a shuffled order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_mask_postprocess_reports_equal_masks_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mask_postprocess.py"), "--rounds", "2",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    keys = {f"{kind} {photo}" for kind in ("shapes", "random-weights") for photo in ("1024x768", "4032x3024")}
    assert result["equal_masks"] == {key: True for key in keys}
    assert set(result["ratios_ours_over_upstream"]) == keys
    assert all(len(result["all_ms"][f"{who} {key}"]) == 2 for key in keys for who in ("ours", "upstream"))


def test_rounds_visit_every_case_once_in_shuffled_orders() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import interleaved_rounds

    calls: list[str] = []
    cases = {name: (lambda n=name: calls.append(n)) for name in "abcde"}
    times = interleaved_rounds(cases, rounds=6)
    assert all(len(v) == 6 for v in times.values())
    rounds = [calls[5 + 5 * r: 10 + 5 * r] for r in range(6)]  # after one warm-up call each
    assert all(sorted(r) == list("abcde") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not one fixed order
