"""Published checkpoints: a registry, a cache and verified downloads (``edgesam weights ...``).

Files are cached in ``$EDGESAM_HOME/weights`` (default ``~/.cache/edgesam/weights``). A download is only
renamed into the cache after its size and SHA-256 (where published) match and the file loads as the
variant it is registered for, so a cached file is always usable. ``$EDGESAM_WEIGHTS_MIRROR`` (a URL or a
folder) replaces every source with ``<mirror>/<filename>``, for air-gapped sites and tests.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .download import fetch, google_drive_url, part_path
from .errors import CheckpointError, ConfigError, DownloadError, UnknownVariantError
from .progress import NullProgress, Progress

HOME_ENV = "EDGESAM_HOME"
MIRROR_ENV = "EDGESAM_WEIGHTS_MIRROR"

_HF_EDGESAM = "https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything"


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint.

    Attributes:
        name: registry name (``edgesam weights download NAME``).
        variant: model variant the file loads into.
        filename: file name in the cache.
        description: one line for ``edgesam weights list``.
        url: direct download URL (or None when ``drive_id`` is set).
        drive_id: Google Drive file id.
        size: bytes, where published.
        sha256: hex digest, where published.
        kind: ``model`` (full model), ``encoder`` (step-1 image encoder only) or ``imagenet`` (RepViT init).
    """

    name: str
    variant: str
    filename: str
    description: str
    url: str | None = None
    drive_id: str | None = None
    size: int | None = None
    sha256: str | None = None
    kind: Literal["model", "encoder", "imagenet"] = "model"

    @property
    def source_url(self) -> str:
        """Where the file comes from, as a user would open it in a browser."""
        if self.url:
            return self.url
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


# Sources: EdgeSAM README (Hugging Face Space chongzhou/EdgeSAM), EdgeSAM-DyT README (Google Drive ids of
# the distillation steps), segment-anything README, sam-hq README, RepViT README (v1.0 release).
# SAM sizes and SHA-256 digests are the values published for these files by many independent projects.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in (
    WeightsEntry("edge_sam", "edge_sam", "edge_sam.pth", "EdgeSAM (original release)",
                 url=f"{_HF_EDGESAM}/edge_sam.pth"),
    WeightsEntry("edge_sam_3x", "edge_sam", "edge_sam_3x.pth", "EdgeSAM trained 3x longer (original release)",
                 url=f"{_HF_EDGESAM}/edge_sam_3x.pth"),
    WeightsEntry("edge_sam_dyt", "edge_sam_dyt", "edge_sam_dyt_step4.pth",
                 "EdgeSAM-DyT final base model (distillation step 4)", drive_id="10cTazWMI2tq0LMXkFog-TdHqn1zFNS2s"),
    WeightsEntry("edge_sam_dyt_hq", "edge_sam_dyt_hq", "edge_sam_dyt_hq_step5.pth",
                 "EdgeSAM-DyT HQ model (distillation step 5)", drive_id="1pYztXLdoBMpUd41No3wdBXSUPtidpKke"),
    WeightsEntry("edge_sam_dyt_step1", "edge_sam_dyt", "edge_sam_dyt_step1.pth",
                 "EdgeSAM-DyT step 1: image encoder only", drive_id="14zMPCbdInahfwNS8rHIMdpY2m7szVwaw",
                 kind="encoder"),
    WeightsEntry("edge_sam_dyt_step2", "edge_sam_dyt_frozen_mask", "edge_sam_dyt_step2.pth",
                 "EdgeSAM-DyT step 2: DyT encoder + SAM decoder", drive_id="1lsd2TsfYMgBN3NJGxGVs-HEu2DANaJQz"),
    WeightsEntry("edge_sam_dyt_step3", "edge_sam_dyt", "edge_sam_dyt_step3.pth",
                 "EdgeSAM-DyT step 3: DyT decoder distilled", drive_id="1YFBE939hOeraelSXm4lEYzoOLR-WQRtS"),
    WeightsEntry("vit_b", "vit_b", "sam_vit_b_01ec64.pth", "SAM ViT-B", url=f"{_SAM}/sam_vit_b_01ec64.pth",
                 size=375_042_383, sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    WeightsEntry("vit_l", "vit_l", "sam_vit_l_0b3195.pth", "SAM ViT-L", url=f"{_SAM}/sam_vit_l_0b3195.pth",
                 size=1_249_524_607, sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    WeightsEntry("vit_h", "vit_h", "sam_vit_h_4b8939.pth", "SAM ViT-H (the distillation teacher)",
                 url=f"{_SAM}/sam_vit_h_4b8939.pth", size=2_564_550_879,
                 sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    WeightsEntry("vit_h_hq", "vit_h_hq", "sam_hq_vit_h.pth", "HQ-SAM ViT-H (the HQ teacher)",
                 drive_id="1qobFYrI4eyIANfBSmYcGuWRaSIXfMOQ8"),
    WeightsEntry("repvit_m0_9", "edge_sam_dyt", "repvit_m0_9_distill_450e.pth",
                 "RepViT-M0.9 ImageNet weights (step-1 encoder init)",
                 url="https://github.com/THU-MIG/RepViT/releases/download/v1.0/repvit_m0_9_distill_450e.pth",
                 kind="imagenet"),
)}

# Variants whose default weights are not registered under the variant's own name.
_DEFAULT_FOR_VARIANT = {"edge_sam_dyt_frozen_mask": "edge_sam_dyt_step2", "default": "edge_sam"}


def cache_dir() -> Path:
    """``$EDGESAM_HOME/weights`` (default ``~/.cache/edgesam/weights``)."""
    home = os.environ.get(HOME_ENV) or os.path.join("~", ".cache", "edgesam")
    return Path(home).expanduser() / "weights"


def get_entry(name: str, registry: Mapping[str, WeightsEntry] | None = None) -> WeightsEntry:
    """Registry entry by name, or the default weights of a model variant.

    Raises:
        ConfigError: ``name`` is a test-only (``*_debug``) variant.
        UnknownVariantError: ``name`` is neither; the message suggests the closest name.
    """
    registry = REGISTRY if registry is None else registry
    key = name if name in registry else _DEFAULT_FOR_VARIANT.get(name, name)
    if key in registry:
        return registry[key]
    if name.endswith("_debug"):
        raise ConfigError(f"'{name}' is a test model with no published weights; pass --checkpoint PATH")
    close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownVariantError(f"No published weights called '{name}'.{hint} See 'edgesam weights list'.")


def cached_path(entry: WeightsEntry) -> Path | None:
    """The cached file of ``entry`` if present (and of the published size), else None."""
    path = cache_dir() / entry.filename
    if not path.is_file() or (entry.size is not None and path.stat().st_size != entry.size):
        return None
    return path


def _download_url(entry: WeightsEntry) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        if "://" not in mirror:  # a local folder
            return str(Path(mirror).expanduser() / entry.filename)
        return mirror.rstrip("/") + "/" + entry.filename
    if entry.url:
        return entry.url
    if entry.drive_id:
        return google_drive_url(entry.drive_id)
    raise ConfigError(f"weights entry '{entry.name}' has neither a URL nor a Google Drive id")


def verify_weights(path: str | Path, entry: WeightsEntry) -> None:
    """Check that ``path`` loads as ``entry.variant`` (keys and shapes, on the meta device: no memory).

    Raises:
        CheckpointError / CheckpointMismatchError: unreadable, or not the registered model.
    """
    import torch

    from .models.build import _build_sam
    from .models.checkpoint import is_imagenet_repvit, load_image_encoder_weights, load_model_weights, read_checkpoint
    from .models.variants import resolve_variant

    state = read_checkpoint(path)
    with torch.device("meta"):
        model = _build_sam(resolve_variant(entry.variant))
    if entry.kind == "model":
        load_model_weights(model, state, entry.variant)
    else:
        if entry.kind == "imagenet" and not is_imagenet_repvit(state):
            raise CheckpointError(f"{path} is not a RepViT ImageNet checkpoint (no classifier.* keys)")
        load_image_encoder_weights(model.image_encoder, state, entry.variant)


def ensure_weights(
    name: str,
    progress: Progress | None = None,
    *,
    force: bool = False,
    registry: Mapping[str, WeightsEntry] | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    chunk_size: int = 1 << 20,
) -> Path:
    """Path of the cached weights ``name`` (entry or variant name), downloading and verifying them first.

    A cached file is returned without any network access unless ``force`` is set.

    Raises:
        DownloadError: offline, the server failed, or the file did not verify (nothing is cached then).
        ConfigError / UnknownVariantError: no published weights for ``name``.
    """
    entry = get_entry(name, registry)
    if not force:
        cached = cached_path(entry)
        if cached is not None:
            return cached
    url = _download_url(entry)
    dest = cache_dir() / entry.filename
    if force:
        # Start from byte 0; the cached file stays until the new one has verified and replaces it.
        part_path(dest).unlink(missing_ok=True)

    def check(part: Path) -> None:
        try:
            verify_weights(part, entry)
        except CheckpointError as exc:
            raise DownloadError(f"downloaded '{entry.name}' weights do not load as '{entry.variant}' ({exc}); "
                                "the file was discarded") from exc

    try:
        return fetch(url, dest, expected_size=entry.size, sha256=entry.sha256, progress=progress or NullProgress(),
                     description=f"{entry.name} ({entry.filename})", retries=retries, backoff=backoff,
                     chunk_size=chunk_size, verify=check)
    except DownloadError as exc:
        if isinstance(exc.__cause__, CheckpointError):
            raise  # the file arrived but is the wrong one: the message already says so
        raise DownloadError(f"cannot fetch the '{entry.name}' weights ({exc}); or download {entry.source_url} "
                            "yourself and pass it with --checkpoint PATH") from exc


def list_weights(registry: Mapping[str, WeightsEntry] | None = None) -> list[dict[str, object]]:
    """One row per entry: name, variant, kind, size (bytes or None), cached path (or None), description."""
    registry = REGISTRY if registry is None else registry
    rows = []
    for entry in registry.values():
        cached = cached_path(entry)
        rows.append({"name": entry.name, "variant": entry.variant, "kind": entry.kind, "size": entry.size,
                     "cached": str(cached) if cached else None, "description": entry.description,
                     "source": entry.source_url})
    return rows
