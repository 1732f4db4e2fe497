"""The arithmetic of merging, on float32 arrays, in place where it can be.

In place because a merge holds at most a few tensors at once and the largest of a 13B
model is 650 MB in float32: every temporary the size of a tensor is another 650 MB.
Each function takes arrays it may overwrite (fresh copies read from the checkpoints).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: beyond it the tensors count as parallel and are lerped
SLERP_EPS = 1e-8
_CHUNK = 4096  # float32 dot products this long are exact to ~1e-7, summed in float64


def lerp_(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """(1 - t)·a + t·b into `a` (`b` is overwritten), with the same float32 roundings as torch's."""
    a *= np.float32(1.0 - t)
    b *= np.float32(t)
    a += b
    return a


def weighted_sum_(tensors: Sequence[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """Σ wᵢ·xᵢ (/ Σ wᵢ) into the first tensor; the others are overwritten."""
    out = tensors[0]
    out *= np.float32(weights[0])
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        x *= np.float32(w)
        out += x
    if normalize:
        out /= np.float32(sum(weights))
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b over the whole tensors, a slice at a time: no tensor-sized temporary, and as exact as
    mergekit's float32 sum (short float32 dot products, added up in float64)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, fa.size, _CHUNK):
        total += float(np.dot(fa[i : i + _CHUNK], fb[i : i + _CHUNK]))
    return total


def slerp_factors(t: float, a: np.ndarray, b: np.ndarray) -> tuple[float, float, bool]:
    """(s0, s1, lerped): the result is s0·a + s1·b, mergekit's SLERP over the whole tensors.

    The angle is the one between the flattened tensors (not row by row: that differs by
    several percent); nearly parallel tensors (|cos| > 0.9995) are interpolated linearly.
    """
    na, nb = math.sqrt(_dot(a, a)), math.sqrt(_dot(b, b))
    na = na if na > SLERP_EPS else 1.0  # mergekit leaves a (near) zero vector unnormalised
    nb = nb if nb > SLERP_EPS else 1.0
    dot = _dot(a, b) / (na * nb)
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return 1.0 - t, t, True
    theta0 = math.acos(dot)
    sin0 = math.sin(theta0)
    theta_t = theta0 * t
    return math.sin(theta0 - theta_t) / sin0, math.sin(theta_t) / sin0, False


def slerp_(t: float, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """SLERP of `b` into `a` (both overwritten): (result, whether it fell back to lerp)."""
    s0, s1, lerped = slerp_factors(t, a, b)
    a *= np.float32(s0)
    b *= np.float32(s1)
    a += b
    return a, lerped


def blockmerge_ratios(n_tensors: int, values: Sequence[float]) -> list[float]:
    """BlockMerge_Gradient's ratio of model 2 for each of `n_tensors` tensors, in order.

    The values are cut into len(values) - 1 sections of n // sections tensors each, every
    section a linspace from one value to the next (ends included, so a value shared by
    two sections appears twice); tensors left over take the last value.
    """
    values = list(values) if len(values) > 1 else [values[0], values[0]]
    sections = len(values) - 1
    per_section = n_tensors // sections
    ratios: list[float] = []
    for start, end in itertools.pairwise(values):
        ratios.extend(float(r) for r in np.linspace(start, end, per_section))
    ratios.extend([values[-1]] * (n_tensors - len(ratios)))
    return ratios


def blockmerge_vocab_(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """BlockMerge_Gradient on tensors with a row per token: the common rows blended, a's extra rows kept."""
    n = min(a.shape[0], b.shape[0])
    lerp_(a[:n], b[:n], ratio)
    return a
