"""Datasets, downloads and image transforms.

Kept free of imports on purpose: submodules (``transforms``, ``shards``, ...) are imported by name so that
torch-free callers never pay for torch.
"""
