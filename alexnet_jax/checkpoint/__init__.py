"""Checkpoints: saves, restores onto any mesh, damage judged on evidence, the workdir and its lock."""
