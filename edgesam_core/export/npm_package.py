"""npm packages a built site ships (onnxruntime-web): fetched from the npm registry once, pinned by version,
verified by the registry's published integrity hash (SRI ``sha512-...``), cached like model weights.

Only named files are taken from the tarball, each written under a name we choose: nothing in the archive
decides where anything lands.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edgesam_core.errors import InputError
from edgesam_core.progress import Progress
from edgesam_core.weight_registry import HOME_ENV

#: Registry base URL; ``EDGESAM_NPM_REGISTRY`` points at a mirror (or a local folder of ``.tgz`` files).
REGISTRY_ENV = "EDGESAM_NPM_REGISTRY"
DEFAULT_REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package: name, exact version and the registry's ``dist.integrity``."""

    name: str
    version: str
    integrity: str

    @property
    def tarball_name(self) -> str:
        """``<name>-<version>.tgz`` (the registry's file name)."""
        return f"{self.name.split('/')[-1]}-{self.version}.tgz"


#: onnxruntime-web, as published on the npm registry (``npm view onnxruntime-web@1.31.1 dist.integrity``).
ORT_WEB = NpmPackage(
    "onnxruntime-web", "1.31.1",
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw==")


def npm_cache_dir() -> Path:
    """``$EDGESAM_HOME/npm`` (default ``~/.cache/edgesam/npm``)."""
    home = os.environ.get(HOME_ENV) or os.path.join("~", ".cache", "edgesam")
    return Path(home).expanduser() / "npm"


def tarball_url(package: NpmPackage, registry: str | None = None) -> str:
    """``<registry>/<name>/-/<name>-<version>.tgz``; ``registry`` defaults to ``$EDGESAM_NPM_REGISTRY`` or npm's."""
    base = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
    return f"{base}/{package.name}/-/{package.tarball_name}"


def integrity_of(path: str | Path, algorithm: str = "sha512") -> str:
    """Subresource-integrity string (``sha512-<base64>``) of a file, as npm writes ``dist.integrity``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{algorithm}-{base64.b64encode(digest.digest()).decode('ascii')}"


def verify_integrity(path: str | Path, package: NpmPackage, name: str | None = None,
                     fix: str = "delete it and build again") -> None:
    """Raise InputError unless ``path`` has ``package.integrity`` (``name`` says where it came from)."""
    algorithm = package.integrity.split("-", 1)[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InputError(f"{package.name}@{package.version}: unsupported integrity {package.integrity[:16]}…")
    actual = integrity_of(path, algorithm)
    if actual != package.integrity:
        raise InputError(f"{name or path} is not {package.name}@{package.version} as published on the npm registry "
                         f"(integrity {actual[:24]}… instead of {package.integrity[:24]}…); {fix}")


def ensure_package(package: NpmPackage, source: str | Path | None = None, progress: Progress | None = None) -> Path:
    """The package's verified tarball in the cache, downloaded (or copied from ``source``) when missing.

    Args:
        package: what to fetch.
        source: a ``.tgz`` file or URL to take it from instead of the registry (still verified).
        progress: download progress.

    Raises:
        DownloadError: the registry could not be reached. InputError: the file is not the pinned package.
    """
    from edgesam_core.download import fetch

    dest = npm_cache_dir() / package.tarball_name
    if dest.is_file():
        try:
            verify_integrity(dest, package)
            return dest
        except InputError:
            dest.unlink()  # a stale or damaged cache entry is ours to replace
    if source is not None and Path(source).is_file():
        verify_integrity(source, package, fix=f"pass the file 'npm pack {package.name}@{package.version}' writes, "
                                               "or drop --ort-web to fetch it from the registry")
    url = str(source) if source is not None else tarball_url(package)
    return fetch(url, dest, progress=progress, description=f"{package.name}@{package.version}",
                 verify=lambda part: verify_integrity(part, package, name=url,
                                                      fix="check the registry or mirror (EDGESAM_NPM_REGISTRY)"))


def extract_files(tarball: str | Path, wanted: dict[str, Path]) -> None:
    """Copy the regular files ``wanted`` (archive name -> destination path) out of an npm tarball.

    Raises:
        InputError: a wanted file is missing from the archive or is not a regular file.
    """
    remaining = dict(wanted)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            dest = remaining.get(member.name)
            if dest is None:
                continue
            if not member.isfile():
                raise InputError(f"{tarball}: {member.name} is not a regular file; the package is damaged")
            source = archive.extractfile(member)
            if source is None:
                raise InputError(f"{tarball}: cannot read {member.name}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with source, open(dest, "wb") as out:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    out.write(chunk)
            del remaining[member.name]
    if remaining:
        raise InputError(f"{tarball} lacks {', '.join(sorted(remaining))}: is it the pinned onnxruntime-web?")
