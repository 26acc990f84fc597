"""Model-side constants and the PDF -> network input transform (shared by training and runtime).

The condition is G(r) on r = 0.00..29.99 A (3000 points), divided by its maximum, viewed
as 6 channels x 500 (six contiguous r segments of 5 A). The structure is the kernel
matrix W = exp(-d^2 / 260) padded to 256 atoms, as four 128 x 128 blocks.

Scale normalisation. Scaling a particle by s scales every interatomic distance, so its
G(r) becomes (up to Q-range and thermal effects) G(r / s): the shape and the bond length
are separate facts. The generated set is exactly that: 331 distinct shapes, each at 38
nearest-neighbour distances. So before the networks see a PDF it is re-gridded so that
its first-shell peak sits at D_REF, and the networks work in that frame: they learn
shapes, not 38 scaled copies of each. The bond length is read off the PDF's first peak
(no learning needed) and the recovered structure is scaled back by d / D_REF. Training
uses this same numpy code, so the transform cannot drift between the two.
"""
from __future__ import annotations

import numpy as np

from cbldm.runtime.kernel import BLOCK, KERNEL_WIDTH, PAD

N_R = 3000
R_STEP = 0.01
PDF_CHANNELS = 6
PDF_LENGTH = N_R // PDF_CHANNELS
LATENT_SHAPE = (1, 16, 16)
D_REF = 2.8                 # A: the first shell lands here (Au/Pt-like, so those barely move)
PEAK_WINDOW = (1.5, 4.5)    # A: where a metal's nearest-neighbour peak can be
PEAK_FRACTION = 0.5         # the first local maximum above this fraction of the window's max


def constants() -> dict:
    """What an exported model must be fed with; goes into every manifest."""
    return {"r_start": 0.0, "r_step": R_STEP, "r_points": N_R, "pdf_channels": PDF_CHANNELS,
            "pdf_length": PDF_LENGTH, "pdf_normalisation": "divide by max(G)",
            "scale_normalisation": {"d_ref": D_REF, "peak_window": list(PEAK_WINDOW),
                                    "peak_fraction": PEAK_FRACTION,
                                    "method": "first-shell peak d (parabolic); G re-gridded as "
                                              "G(r * d / d_ref), zero beyond the data; "
                                              "structures scaled by d / d_ref"},
            "kernel_width_t": KERNEL_WIDTH, "pad_atoms": PAD, "kernel_blocks": [4, BLOCK, BLOCK],
            "latent_shape": list(LATENT_SHAPE)}


class NoPeakError(ValueError):
    pass


def nn_distance(g: np.ndarray, r_step: float = R_STEP, strict: bool = True) -> np.ndarray:
    """First-shell distance (A) of G(r) on r = r_step * k, one per row of (..., n).

    The first local maximum in PEAK_WINDOW that reaches PEAK_FRACTION of the window's
    largest value, refined by a parabola through it and its neighbours. Not the global
    maximum: in larger particles the third shell (24 neighbours at sqrt(3) d in FCC) can
    outgrow the first, while termination ripples and noise stay well under half of it.
    A row without such a peak raises NoPeakError, or gives NaN when not ``strict``.
    """
    g = np.asarray(g, dtype=np.float64)
    lo, hi = (int(round(x / r_step)) for x in PEAK_WINDOW)
    w = g[..., lo - 1:hi + 2]
    mid = w[..., 1:-1]
    top = mid.max(axis=-1, keepdims=True)
    is_peak = (mid >= w[..., :-2]) & (mid > w[..., 2:]) & (mid >= PEAK_FRACTION * top) & (top > 0)
    found = is_peak.any(axis=-1)
    if strict and not np.all(found):
        raise NoPeakError(f"no nearest-neighbour peak between {PEAK_WINDOW[0]} and {PEAK_WINDOW[1]} A")
    k = np.argmax(is_peak, axis=-1)
    ym = np.take_along_axis(w, k[..., None], -1)[..., 0]
    y0 = np.take_along_axis(w, k[..., None] + 1, -1)[..., 0]
    yp = np.take_along_axis(w, k[..., None] + 2, -1)[..., 0]
    den = ym - 2 * y0 + yp
    delta = np.where(den < 0, 0.5 * (ym - yp) / np.where(den < 0, den, -1.0), 0.0)
    return np.where(found, (lo + k + np.clip(delta, -0.5, 0.5)) * r_step, np.nan)


def rescale_r(g: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """G'(r) = G(r * factor) on the same grid (linear interpolation, zero beyond the data)."""
    g = np.asarray(g, dtype=np.float64)
    n = g.shape[-1]
    factor = np.asarray(factor, dtype=np.float64)[..., None]
    src = np.arange(n) * factor                       # fractional source index
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    inside = i0 < n - 1
    i0c = np.minimum(i0, n - 2)
    a = np.take_along_axis(np.broadcast_to(g, src.shape), i0c, -1)
    b = np.take_along_axis(np.broadcast_to(g, src.shape), i0c + 1, -1)
    out = a + (b - a) * frac
    return np.where(inside, out, np.where(i0 == n - 1, g[..., -1:] * (frac == 0), 0.0))


def normalise_pdf(g: np.ndarray) -> np.ndarray:
    """(..., 3000) G(r) -> (..., 6, 500), divided by its maximum (peaks of 1)."""
    g = np.asarray(g, dtype=np.float32)
    if g.shape[-1] != N_R:
        raise ValueError(f"G(r) must have {N_R} points on the model grid, got {g.shape[-1]}")
    peak = np.max(g, axis=-1, keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    return (g / peak).reshape(*g.shape[:-1], PDF_CHANNELS, PDF_LENGTH)


def model_input(g: np.ndarray, d: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw G(r) (..., 3000) on the model grid -> network input (..., 6, 500) and the first-shell d.

    Structures the networks produce live in the d = D_REF frame: multiply them by d / D_REF."""
    g = np.asarray(g, dtype=np.float64)
    if g.shape[-1] != N_R:
        raise ValueError(f"G(r) must have {N_R} points on the model grid, got {g.shape[-1]}")
    d = nn_distance(g) if d is None else np.asarray(d, dtype=np.float64)
    return normalise_pdf(rescale_r(g, d / D_REF)), d
