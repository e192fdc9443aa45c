import math

import pytest

from pipeline.guidance.training import warmup_cosine


def test_linear_warmup_over_first_tenth_then_cosine_to_zero():
    total, warmup, peak = 1000, 100, 1e-4
    lrs = [warmup_cosine(s, total, warmup, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[49] == pytest.approx(peak * 50 / warmup)
    assert lrs[99] == pytest.approx(peak)  # the peak is reached at the end of warm-up
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))  # strictly rising during warm-up
    assert all(a >= b for a, b in zip(lrs[99:], lrs[100:]))  # never rising afterwards
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx(peak / 2, rel=1e-2)  # cosine: half-way down at half the decay
    assert warmup_cosine(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)


def test_no_warmup_and_floor():
    assert warmup_cosine(0, 10, 0, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 0, 1.0, final_fraction=0.1) == pytest.approx(0.1)
    assert warmup_cosine(5, 10, 0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
