"""Learning-rate schedule of the paper: linear warm-up over the first steps, then cosine annealing."""

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_fraction: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): 0 -> peak over warm-up, then cosine to final_fraction * peak."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    floor = final_fraction * peak_lr
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
