"""The arithmetic of merging, on float32 arrays, in place where it can be.

In place because a merge holds at most a few tensors at once and the largest of a 13B
model is 650 MB in float32: every temporary the size of a tensor is another 650 MB.
Each function takes arrays it may overwrite (fresh copies read from the checkpoints).

Each rounds as its reference does, so that results are bit for bit the same where the
reference's own are (bench/mergekit_compare.py checks it): mergekit 0.1.5's linear merge
accumulates with `addcmul_`, which PyTorch's CPU kernels compute as a fused multiply-add
(one rounding per model), and normalises by the weights' float32 sum; its SLERP multiplies
and adds in separate steps; BlockMerge_Gradient's `(1 - r) * a + r * b` too.
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


_FMA_CHUNK = 1 << 18  # elements per float64 temporary (2 MiB)
_F32_DROPPED = 0x1FFFFFFF  # the float64 mantissa bits below a float32's
_F32_HALF = 0x10000000  # …and their pattern at a float32 midpoint
_F32_TINY = 2.0**-125  # below this a float32 has fewer bits: check every value there


def fma_(acc: np.ndarray, x: np.ndarray, w: float) -> np.ndarray:
    """acc + x·w with one rounding, into `acc` (float32 arrays of one shape): a fused multiply-add.

    numpy has none, so it is built from float64: x·w is exact there (24 + 24 bits), and
    the sum rounded to float64 then to float32 is the fused result except where the
    float64 sum lands exactly on a midpoint between two float32 values; there the sum's
    exact error (Knuth's TwoSum) says which way the true value lies.
    """
    if not (acc.flags.c_contiguous and x.flags.c_contiguous):
        acc[...] = fma_(np.ascontiguousarray(acc), np.ascontiguousarray(x), w)
        return acc
    flat_acc, flat_x = acc.reshape(-1), x.reshape(-1)
    w64 = np.float64(np.float32(w))
    for i in range(0, flat_acc.size, _FMA_CHUNK):
        a = flat_acc[i : i + _FMA_CHUNK].astype(np.float64)
        p = flat_x[i : i + _FMA_CHUNK].astype(np.float64)
        p *= w64
        s = a + p
        out = s.astype(np.float32)
        bits = s.view(np.uint64)
        suspect = np.flatnonzero(((bits & _F32_DROPPED) == _F32_HALF) | (np.abs(s) < _F32_TINY))
        if suspect.size:
            ss, aa, pp, rr = s[suspect], a[suspect], p[suspect], out[suspect]
            back = ss - aa
            err = (aa - (ss - back)) + (pp - back)  # the exact sum is ss + err
            lo = np.where(rr.astype(np.float64) <= ss, rr, np.nextafter(rr, np.float32(-np.inf)))
            hi = np.nextafter(lo, np.float32(np.inf))
            midpoint = (lo.astype(np.float64) + hi.astype(np.float64)) * 0.5 == ss
            fix = midpoint & (err != 0)
            out[suspect[fix]] = np.where(err[fix] > 0, hi[fix], lo[fix])
        flat_acc[i : i + _FMA_CHUNK] = out
    return acc


def _ilp_sum(items: np.ndarray) -> np.ndarray:
    """PyTorch's `row_sum`: four accumulators taking every fourth item, the leftovers into the first, then
    the four added up. Exact up to 16 items per accumulator, where its cascade of chunks starts (544 weights)."""
    parts = np.zeros((4, *items.shape[1:]), dtype=np.float32)
    whole = len(items) // 4 * 4
    for i in range(len(items)):
        parts[i % 4 if i < whole else 0] += items[i]
    for k in range(1, 4):
        parts[0] += parts[k]
    return parts[0]


def torch_sum_f32(values: Sequence[float]) -> np.float32:
    """The float32 sum of a few numbers in the order PyTorch's CPU `sum` adds them (aten's SumKernel.cpp).

    Fewer than 8 go through `row_sum` one by one; more through it as 8-lane vectors, then the
    numbers that fill no vector and the lanes are added, in that order, to zero. mergekit's
    linear merge divides by this sum of its weights.
    """
    v = np.asarray(values, dtype=np.float32)
    lanes = 8
    if v.size < lanes:
        return np.float32(_ilp_sum(v))
    n_vec = v.size // lanes
    vector = _ilp_sum(v[: n_vec * lanes].reshape(n_vec, lanes))
    total = np.float32(0)
    for x in [*v[n_vec * lanes :], *vector]:
        total = np.float32(total + x)
    return total


def weighted_sum_(tensors: Sequence[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """Σ wᵢ·xᵢ (/ Σ wᵢ) into the first tensor; the others are left as they were.

    As mergekit 0.1.5's linear merge computes it: from zero, each model added with a fused
    multiply-add, then divided by the float32 sum of the float32 weights.
    """
    out = tensors[0]
    out *= np.float32(weights[0])
    out += np.float32(0)  # 0 + x·w: a product of -0 becomes +0, as the sum from zero gives
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        fma_(out, x, w)
    if normalize:
        out /= torch_sum_f32(weights)
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
    """(s0, s1, lerped): the result is s0·a + s1·b, mergekit 0.1.5's SLERP over the whole tensors.

    The angle is the one between the flattened tensors (not row by row: that differs by
    several percent): s0 = sin((1 − t)·θ) / sin θ, s1 = sin(t·θ) / sin θ. Nearly parallel
    tensors (|cos θ| above 0.9995 in float32) are interpolated linearly, with mergekit's
    float32 1 − t. The cosine is computed more exactly than mergekit's float32 sums (whose
    last bits change with PyTorch's thread count), so s0 and s1 may differ from its in the
    last bit.
    """
    na, nb = math.sqrt(_dot(a, a)), math.sqrt(_dot(b, b))
    na = na if na > SLERP_EPS else 1.0  # mergekit leaves a (near) zero vector unnormalised
    nb = nb if nb > SLERP_EPS else 1.0
    dot = min(1.0, max(-1.0, _dot(a, b) / (na * nb)))
    if abs(np.float32(dot)) > np.float32(SLERP_DOT_THRESHOLD):
        t32 = np.float32(t)
        return float(np.float32(1) - t32), float(t32), True
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta, False


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
