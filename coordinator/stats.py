"""Small statistics shared by routing (is one model clearly stronger?) and the benchmarks (accuracy with its
spread). Pure: no I/O."""

from __future__ import annotations

import math


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``correct / total`` (95 % for z = 1.96); None when empty.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n."""
    if total <= 0:
        return None
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be between 0 and {total}, got {correct}")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
