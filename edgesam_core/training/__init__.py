"""Distillation of EdgeSAM-DyT from SAM: the recipe (``distill``), its engine, losses, optimizer, prompts,
teacher and distributed plumbing. Submodules are imported by name; nothing is imported here."""
