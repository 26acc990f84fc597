"""Make simulated PDFs look measured: randomised physics applied to G(r), in torch.

Measured PDFs differ from the training set in Qmax, Qmin, Qdamp, thermal broadening,
noise and r range. For one element all of these act on F(Q) or G(r) exactly:
- a larger Biso multiplies F(Q) by exp(-dU Q^2) (every sigma_ij^2 grows by 2 dU);
- Qmin/Qmax cut F(Q);
- Qdamp multiplies G(r) by exp(-(Qdamp r)^2 / 2);
- a shorter measured r range is zeros beyond it (as the reader fills it).
F(Q) is recovered from G(r) on 0..30 A by a sine transform (clusters fit inside 30 A).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class AugmentConfig:
    # half the samples stay clean: p 0.5 kept the measured Au144 answer (Rwp 0.77 vs 0.96
    # without augmentation) at a small cost on clean simulated PDFs (0.763 vs 0.731)
    p: float = 0.5                 # fraction of samples augmented
    qmax: tuple = (16.0, 25.0)
    qmin: tuple = (0.5, 1.5)
    dbiso: tuple = (0.0, 0.6)      # extra Biso (A^2)
    qdamp: tuple = (0.0, 0.05)
    rcut_p: float = 0.3            # chance of a shorter r range
    rcut: tuple = (15.0, 30.0)
    noise: tuple = (0.0, 0.02)     # Gaussian noise, fraction of max |G|

    def as_dict(self) -> dict:
        return asdict(self)


class PDFAugmenter:
    def __init__(self, cfg: AugmentConfig, n_r: int = 3000, r_step: float = 0.01,
                 q_step: float = 0.05, q_max: float = 25.0):
        self.cfg = cfg
        self.r = torch.arange(n_r, dtype=torch.float32) * r_step
        self.q = torch.arange(1, int(q_max / q_step) + 1, dtype=torch.float32) * q_step
        s = torch.sin(self.r[:, None] * self.q[None, :])
        self.to_f = s * r_step                       # F(Q)  = int G(r) sin(Qr) dr
        self.to_g = s.T * (2.0 / torch.pi) * q_step  # G(r) = 2/pi int F(Q) sin(Qr) dQ

    def __call__(self, g: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        c = self.cfg
        b = g.shape[0]

        def u(lo_hi):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(b, 1, generator=gen)

        apply = torch.rand(b, 1, generator=gen) < c.p
        f = g @ self.to_f
        qmax, qmin, du = u(c.qmax), u(c.qmin), u(c.dbiso) / (8 * torch.pi**2)
        window = ((self.q[None] <= qmax) & (self.q[None] >= qmin)).float()
        f = f * window * torch.exp(-du * self.q[None] ** 2)
        out = f @ self.to_g
        out = out * torch.exp(-0.5 * (u(c.qdamp) * self.r[None]) ** 2)
        cut = (torch.rand(b, 1, generator=gen) < c.rcut_p) & (self.r[None] > u(c.rcut))
        out = out.masked_fill(cut, 0.0)
        out = out + torch.randn(out.shape, generator=gen) * u(c.noise) * out.abs().amax(1, keepdim=True)
        return torch.where(apply, out, g)
