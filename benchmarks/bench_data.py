"""Benchmark the SA-1B download path on this machine: loopback HTTP download and verify+extract speed.

Builds a few SA-1B-style shards (random-noise JPEGs, so they do not compress, plus small JSONs) in a
temporary folder, serves them from a local HTTP server and measures:

- ``download``: ``edgesam_core.download.fetch`` throughput in MB/s (one shard at a time);
- ``extract``: ``edgesam_core.data.archive.extract_shard`` (full read, SHA-256, safe extraction) in
  images/s and MB/s;
- ``end_to_end``: ``download_sa1b`` with ``--jobs 2`` (download + verify + extract + manifest).

Usage::

    python benchmarks/bench_data.py --shards 3 --shard-mb 60 --output bench_data.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: make `tests.helpers` importable
    sys.path.insert(0, str(ROOT))


def _noise_jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_shard(path: Path, first_id: int, target_bytes: int, seed: int) -> int:
    """Write a tar of jpg/json pairs of about ``target_bytes``; returns the number of images."""
    rng = np.random.default_rng(seed)
    count, written = 0, 0
    with tarfile.open(path, "w") as tar:
        while written < target_bytes:
            stem = f"sa_{first_id + count}"
            jpg = _noise_jpeg(rng, 768, 1024)
            ann = json.dumps({"image": {"image_id": first_id + count, "width": 1024, "height": 768,
                                        "file_name": f"{stem}.jpg"}, "annotations": []}).encode()
            for name, data in ((f"{stem}.jpg", jpg), (f"{stem}.json", ann)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                written += len(data)
            count += 1
    return count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3, help="number of generated shards")
    parser.add_argument("--shard-mb", type=int, default=60, help="approximate size of each shard in MB")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON result here too")
    args = parser.parse_args(argv)

    from edgesam_core.data.archive import extract_shard
    from edgesam_core.data.sa1b_download import download_sa1b
    from edgesam_core.data.shards import Shard
    from edgesam_core.download import fetch
    from tests.helpers.httpserver import FileServer

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        src.mkdir()
        t0 = time.perf_counter()
        images = {}
        for i in range(args.shards):
            name = f"sa_{i:06d}"
            images[name] = build_shard(src / f"{name}.tar", 1000 * i, args.shard_mb * 10**6, seed=i)
        build_s = time.perf_counter() - t0
        sizes = {n: (src / f"{n}.tar").stat().st_size for n in images}
        total_mb = sum(sizes.values()) / 1e6

        with FileServer(root=src) as srv:
            dl = tmp_path / "dl"
            t0 = time.perf_counter()
            for name in images:
                fetch(srv.url(f"/{name}.tar"), dl / f"{name}.tar", expected_size=sizes[name])
            download_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            extracted = 0
            for name in images:
                res = extract_shard(dl / f"{name}.tar", tmp_path / "x" / "images", tmp_path / "x" / "annotations",
                                    tmp_path / "x" / ".staging", expected_size=sizes[name])
                extracted += res.images
            extract_s = time.perf_counter() - t0

            links = tmp_path / "links.txt"
            links.write_text("file_name\tcdn_link\n" + "".join(f"{n}.tar\t{srv.url(f'/{n}.tar')}\n" for n in images))
            t0 = time.perf_counter()
            report = download_sa1b(tmp_path / "SA-1B", [Shard(n, "train") for n in images], links_file=links,
                                   jobs=2, check_space=False)
            e2e_s = time.perf_counter() - t0

    result = {
        "benchmark": "bench_data",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "shards": args.shards, "total_mb": round(total_mb, 1), "images": sum(images.values()),
        "build_s": round(build_s, 2),
        "download": {"seconds": round(download_s, 2), "mb_per_s": round(total_mb / download_s, 1)},
        "extract": {"seconds": round(extract_s, 2), "images_per_s": round(extracted / extract_s, 1),
                    "mb_per_s": round(total_mb / extract_s, 1)},
        "end_to_end_jobs2": {"seconds": round(e2e_s, 2), "mb_per_s": round(total_mb / e2e_s, 1),
                             "images": report.images},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
