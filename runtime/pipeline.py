"""PDF in, ranked candidate structures out: the whole inference path, backend-agnostic.

A backend supplies four numpy callables (the exported graphs):
    condition(pdf (B,6,500))            -> cond (B,2,125)
    prior(pdf (B,6,500))                -> mu, logvar (B,1,16,16)  (diffusion space)
    unet(x (B,1,16,16), t (B,), cond)   -> eps (B,1,16,16)
    decoder(z (B,1,16,16))              -> kernel blocks (B,4,128,128)
Training-side evaluation passes the PyTorch networks, the runtime ONNX Runtime sessions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from cbldm.runtime.kernel import KERNEL_WIDTH, count_atoms, from_blocks
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, best_scale, rwp
from cbldm.runtime.preprocess import D_REF, LATENT_SHAPE, model_input
from cbldm.runtime.recovery import recover_xyz
from cbldm.runtime.sampling import SamplerConfig, Schedule, skip_step_sample


class Networks(Protocol):
    condition: Callable[[np.ndarray], np.ndarray]
    prior: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    unet: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    decoder: Callable[[np.ndarray], np.ndarray]


@dataclass
class Candidate:
    xyz: np.ndarray
    n_atoms: int
    rwp: float
    rwp_unrefined: float  # before the isotropic size fit
    scale: float          # isotropic size factor fitted against the PDF (1.0 = none)
    g_calc: np.ndarray    # PDF of the candidate on the model grid, scaled to the input
    recovery_loss: float


@dataclass
class Prediction:
    candidates: list[Candidate]              # best (lowest Rwp) first
    timings: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def _fit_size(xyz: np.ndarray, g_obs: np.ndarray, calc: DebyePDF, element: str,
              r_one: float, g_one: np.ndarray, span: float = 0.03) -> tuple[float, float, np.ndarray]:
    """Best isotropic scale of the structure (within +-span) by Rwp, bounded scalar search.

    ``r_one``, ``g_one``: the Rwp and PDF at scale 1, which the caller already has."""
    from scipy.optimize import minimize_scalar

    def cost(s):
        return rwp(g_obs, calc.calc(xyz * s, element, method="histogram"))

    res = minimize_scalar(cost, bounds=(1 - span, 1 + span), method="bounded",
                          options={"xatol": 2e-4, "maxiter": 25})
    if res.fun >= r_one:
        return 1.0, r_one, g_one
    s = float(res.x)
    g = calc.calc(xyz * s, element, method="histogram")
    return s, rwp(g_obs, g), g


def predict(nets: Networks, g: np.ndarray, sampler: SamplerConfig, candidates: int = 4,
            element: str = "Au", seed: int = 0, schedule: Schedule | None = None,
            refine_size: bool = True, t: float = KERNEL_WIDTH) -> Prediction:
    """Sample ``candidates`` structures for one PDF (G on the model grid, 3000 points)."""
    return predict_batch(nets, np.asarray(g)[None], sampler, candidates, [element], seed,
                         schedule, refine_size, t)[0]


def predict_batch(nets: Networks, gs: np.ndarray, sampler: SamplerConfig, candidates: int = 4,
                  elements: list[str] | None = None, seed: int = 0, schedule: Schedule | None = None,
                  refine_size: bool = True, t: float = KERNEL_WIDTH) -> list[Prediction]:
    """Several PDFs (P, 3000) at once: the networks see P x candidates rows per call."""
    gs = np.asarray(gs, dtype=np.float64)
    p_n = len(gs)
    elements = elements or ["Au"] * p_n
    timings = {}
    rng = np.random.default_rng(seed)
    schedule = schedule or Schedule()
    t0 = time.perf_counter()
    pdf, d_nn = model_input(gs)  # networks work at first-shell distance D_REF
    pdf = np.repeat(pdf, candidates, axis=0)  # rows: pdf0 x K, pdf1 x K, ...
    cond = nets.condition(pdf)
    mu, logvar = nets.prior(pdf)
    timings["encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    z = skip_step_sample(schedule, nets.unet, cond, mu.astype(np.float64),
                         logvar.astype(np.float64), sampler, rng)
    timings["sample_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    blocks = nets.decoder(z.astype(np.float32).reshape(len(pdf), *LATENT_SHAPE))
    timings["decode_s"] = time.perf_counter() - t0

    calc = DebyePDF(DEEPSTRUC_PARAMS)
    results = []
    for i in range(p_n):
        t0 = time.perf_counter()
        out = [_candidate(blocks[i * candidates + k], gs[i], calc, elements[i], refine_size, t,
                          d_nn[i] / D_REF) for k in range(candidates)]
        out.sort(key=lambda c: c.rwp)
        tm = {k: v / p_n for k, v in timings.items()} | {"recover_s": time.perf_counter() - t0}
        results.append(Prediction(out, tm, sampler.as_dict() | {"candidates": candidates, "seed": seed,
                                                               "refine_size": refine_size}))
    return results


def _candidate(blocks: np.ndarray, g_obs: np.ndarray, calc: DebyePDF, element: str,
               refine_size: bool, t: float, frame: float) -> Candidate:
    """``frame``: d / D_REF, the factor from the networks' frame back to angstroms."""
    w = from_blocks(np.asarray(blocks, dtype=np.float64))
    n = max(count_atoms(w, t), 1)
    rec = recover_xyz(w[:n, :n], t=t)
    xyz = rec.xyz * frame
    g_calc = calc.calc(xyz, element, method="histogram")
    s, r = 1.0, rwp(g_obs, g_calc)
    r_raw = r
    if refine_size and n > 1:
        s, r, g_calc = _fit_size(xyz, g_obs, calc, element, r, g_calc)
    g_scaled = g_calc * best_scale(g_obs, g_calc)
    return Candidate(xyz * s, n, r, r_raw, s, g_scaled, rec.loss)
