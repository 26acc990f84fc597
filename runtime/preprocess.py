"""Model-side constants and the PDF -> network input transform (shared by training and runtime).

The condition is G(r) on r = 0.00..29.99 A (3000 points), divided by its maximum, viewed
as 6 channels x 500 (six contiguous r segments of 5 A). The structure is the kernel
matrix W = exp(-d^2 / 260) padded to 256 atoms, as four 128 x 128 blocks.
"""
from __future__ import annotations

import numpy as np

from cbldm.runtime.kernel import BLOCK, KERNEL_WIDTH, PAD

N_R = 3000
R_STEP = 0.01
PDF_CHANNELS = 6
PDF_LENGTH = N_R // PDF_CHANNELS
LATENT_SHAPE = (1, 16, 16)


def constants() -> dict:
    """What an exported model must be fed with; goes into every manifest."""
    return {"r_start": 0.0, "r_step": R_STEP, "r_points": N_R, "pdf_channels": PDF_CHANNELS,
            "pdf_length": PDF_LENGTH, "pdf_normalisation": "divide by max(G)",
            "kernel_width_t": KERNEL_WIDTH, "pad_atoms": PAD, "kernel_blocks": [4, BLOCK, BLOCK],
            "latent_shape": list(LATENT_SHAPE)}


def normalise_pdf(g: np.ndarray) -> np.ndarray:
    """(..., 3000) G(r) -> (..., 6, 500), divided by its maximum (peaks of 1)."""
    g = np.asarray(g, dtype=np.float32)
    if g.shape[-1] != N_R:
        raise ValueError(f"G(r) must have {N_R} points on the model grid, got {g.shape[-1]}")
    peak = np.max(g, axis=-1, keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    return (g / peak).reshape(*g.shape[:-1], PDF_CHANNELS, PDF_LENGTH)
