"""The structure representation: a Gaussian kernel ("Laplacian") matrix of the atoms.

W_ij = exp(-|x_i - x_j|^2 / t), t = 260 A^2 in the reference code, zero-padded to
256 x 256 (atoms in the leading rows) and viewed as four 128 x 128 blocks stacked as
channels (4, 128, 128): [top-left, top-right, bottom-left, bottom-right].
"""
from __future__ import annotations

import math

import numpy as np

KERNEL_WIDTH = 260.0
PAD = 256
BLOCK = 128
ATOM_RADIUS = 8.0  # A: a row is an atom if some atom (itself included) lies within 8 A


def kernel_matrix(xyz: np.ndarray, t: float = KERNEL_WIDTH, pad: int | None = PAD) -> np.ndarray:
    """W = exp(-d^2 / t) for the atoms in ``xyz`` (N, 3), zero-padded to ``pad`` rows."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    n = len(xyz)
    if pad is not None and n > pad:
        raise ValueError(f"{n} atoms exceed the model's {pad}-atom capacity")
    sq = np.sum(xyz**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * xyz @ xyz.T, 0.0)
    w = np.exp(-d2 / t)
    if pad is None:
        return w
    out = np.zeros((pad, pad))
    out[:n, :n] = w
    return out


def to_blocks(w: np.ndarray) -> np.ndarray:
    """(..., 256, 256) -> (..., 4, 128, 128)."""
    b = BLOCK
    return np.stack([w[..., :b, :b], w[..., :b, b:], w[..., b:, :b], w[..., b:, b:]], axis=-3)


def from_blocks(blocks: np.ndarray) -> np.ndarray:
    """(..., 4, 128, 128) -> (..., 256, 256); inverse of ``to_blocks``."""
    top = np.concatenate([blocks[..., 0, :, :], blocks[..., 1, :, :]], axis=-1)
    bottom = np.concatenate([blocks[..., 2, :, :], blocks[..., 3, :, :]], axis=-1)
    return np.concatenate([top, bottom], axis=-2)


def atom_threshold(t: float = KERNEL_WIDTH) -> float:
    return math.exp(-(ATOM_RADIUS**2) / t)


def count_atoms(w: np.ndarray, t: float = KERNEL_WIDTH) -> int:
    """The number of rows whose largest entry is >= exp(-8^2/t) (an atom within 8 A).

    Atoms occupy the leading rows by construction, so the caller keeps the first
    ``count_atoms`` rows. A real atom's row holds its diagonal (1.0) and padding rows hold
    ~0, so the threshold (0.78 at t=260) sits far from both under generation noise.

    A kernel with NaN or inf entries raises ValueError: such a row is neither an atom nor
    padding, and counting it as padding once turned a broken decode into a 1-atom answer.
    """
    w = np.asarray(w)
    bad = np.size(w) - int(np.count_nonzero(np.isfinite(w)))
    if bad:
        raise ValueError(f"kernel matrix has {bad} non-finite entries: no atom count from it")
    rowmax = np.max(w, axis=-1)
    return int(np.count_nonzero(rowmax >= atom_threshold(t)))


def unit_diagonal(w: np.ndarray) -> np.ndarray:
    """W_ij / sqrt(W_ii W_jj): a Gaussian kernel has ones on its diagonal.

    A decoder that writes occupancies into the kernel (W_ij = m_i m_j exp(-d^2/t)) leaves
    its diagonal at m_i^2; read as distances, an atom counted at m = 0.9 sits
    sqrt(d^2 - t ln 0.81) from its neighbours: 7.9 A instead of 2.8 A at t = 260. That made
    the detached atoms of the first shipped models. Dividing the occupancy out restores the
    geometry the decoder meant."""
    d = np.sqrt(np.clip(np.diagonal(w), 1e-12, None))
    return w / d[:, None] / d[None, :]
