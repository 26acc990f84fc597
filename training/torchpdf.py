"""Batched PDFs of single-element clusters in torch, for structures drawn during training.

The same forward model as the runtime's ``DebyePDF(method="histogram")`` and
``PDFRefiner``: pair distances binned with linear weights on a grid of ``stride`` x 1e-3 A,
F(Q) = (2/N) hist @ K with K the cached sine kernel times the Debye-Waller factor, and
G = T F with T the calculator's own linear map (Qmin cut, zero-padded sine FFT, linear
interpolation onto r). Both matrices come from the numpy calculator, so the two cannot
drift apart; ``tests/test_training.py`` compares them.
"""
from __future__ import annotations

import numpy as np
import torch

from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, PDFParams


class TorchPDF:
    def __init__(self, params: PDFParams = DEEPSTRUC_PARAMS, stride: int = 2,
                 device: str | torch.device = "cpu"):
        calc = DebyePDF(params)
        if params.delta1 or params.delta2:
            raise ValueError("TorchPDF: delta1/delta2 make the peak width depend on r; not supported")
        self.h = calc.HIST_STEP * stride
        dw = np.exp(-0.5 * 2.0 * calc.params.uiso * calc.q ** 2)
        k = calc._hist_kernel()[::stride] * dw[None, :]
        t = calc._fq_to_gr(np.eye(calc.nq))                     # (nq, n_r): G of unit F vectors
        self.device = torch.device(device)
        self.K = torch.from_numpy(k).float().to(self.device)    # (bins, nq)
        self.T = torch.from_numpy(t).float().to(self.device)    # (nq, n_r)
        self.rcalchi = calc.rcalchi
        self.r = calc.r

    @torch.no_grad()
    def __call__(self, xyz: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """xyz (B, P, 3) padded coordinates (A), n_atoms (B,) -> G (B, n_r)."""
        xyz = xyz.to(self.device, torch.float32)
        n = n_atoms.to(self.device)
        b, p, _ = xyz.shape
        nb = self.K.shape[0]
        iu, ju = torch.triu_indices(p, p, 1, device=self.device)
        d = torch.linalg.vector_norm(xyz[:, iu] - xyz[:, ju], dim=-1)    # (B, pairs)
        valid = (ju[None] < n[:, None]) & (d > 0) & (d <= self.rcalchi)  # j > i: both atoms real
        x = d / self.h
        lo = x.floor().long().clamp(0, nb - 2)
        w = x - lo
        flat = lo + (torch.arange(b, device=self.device) * nb)[:, None]
        hist = torch.zeros(b * nb, device=self.device)
        hist.scatter_add_(0, flat[valid], (1.0 - w)[valid])
        hist.scatter_add_(0, flat[valid] + 1, w[valid])
        f = (hist.view(b, nb) @ self.K) * (2.0 / n.clamp_min(1).float())[:, None]
        return f @ self.T
