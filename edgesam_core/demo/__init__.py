"""``edgesam demo``: a local web page to click, box and segment with any predictor backend.

:class:`~edgesam_core.demo.session.DemoSession` owns the model and the uploaded images;
:func:`~edgesam_core.demo.server.serve` exposes it over HTTP with the page in ``static/``.
Nothing here is imported by ``edgesam --help``.
"""

from __future__ import annotations

__all__ = ["DemoServer", "DemoSession", "serve"]


def __getattr__(name: str) -> object:
    # Lazy re-exports: importing the package must not import torch.
    if name == "DemoSession":
        from edgesam_core.demo.session import DemoSession

        return DemoSession
    if name in ("DemoServer", "serve"):
        from edgesam_core.demo import server

        return getattr(server, name)
    raise AttributeError(f"module 'edgesam_core.demo' has no attribute {name!r}")
