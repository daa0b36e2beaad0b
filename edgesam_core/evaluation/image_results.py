"""Per-image evaluation results on disk, so ``evaluate`` resumes and shards without a coordinator.

Each image's IoUs (one row per object, one column per click), size buckets and skipped empty objects go to
``<folder>/<hash of the image key>.json`` atomically, with the job they were computed for. A resumed run reuses an
image's file only for the same job; ``torchrun`` ranks each write their share into the same folder, and the rank
that finds every image's file there aggregates the whole report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ImageResult:
    """One image's contribution to the report."""

    rows: list[list[float]]
    buckets: list[str]
    skipped: int


class ImageResults:
    """The folder of per-image results of one evaluation job.

    Args:
        folder: where the files go (created).
        job: what the results depend on (settings, checkpoint, data); files of another job are ignored.
    """

    def __init__(self, folder: str | Path, job: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.job = json.loads(json.dumps(job, sort_keys=True, default=str))

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"

    def load(self, key: str) -> ImageResult | None:
        """The stored result of image ``key`` for this job, or None (missing, unreadable or another job's)."""
        try:
            document = json.loads(self._path(key).read_text(encoding="utf-8"))
            if document["job"] != self.job or document["key"] != key:
                return None
            return ImageResult([[float(v) for v in row] for row in document["rows"]],
                               [str(b) for b in document["buckets"]], int(document["skipped"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, key: str, result: ImageResult) -> None:
        """Write image ``key``'s result atomically (never half written)."""
        from edgesam_core.evaluation.report import write_json

        write_json({"key": key, "job": self.job, "rows": result.rows, "buckets": result.buckets,
                    "skipped": result.skipped}, self._path(key), indent=None)
