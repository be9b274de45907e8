"""Distillation: teachers (checkpoints, registry backbones, TorchScript, caches of outputs) and their losses."""
