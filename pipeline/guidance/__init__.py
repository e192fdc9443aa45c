"""Guidance and its distillation: the adapters (per-block and fused), the sampling loop (CFG, AGD,
the cheap-CFG baselines), adapter training, sampling from Python, and AGD inside diffusers pipelines."""
