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
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import numpy as np

from cbldm.runtime.kernel import KERNEL_WIDTH, count_atoms, from_blocks, unit_diagonal
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, best_scale, rwp
from cbldm.runtime.preprocess import D_REF, LATENT_SHAPE, model_input
from cbldm.runtime.recovery import recover_xyz
from cbldm.runtime.refine import PDFRefiner
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
    rwp_unrefined: float  # as the networks gave it: before the size fit and refinement
    scale: float          # isotropic size factor fitted against the PDF (1.0 = none)
    g_calc: np.ndarray    # PDF of the candidate on the model grid, scaled to the input
    recovery_loss: float
    rwp_size_fit: float = float("nan")   # after the size fit, before coordinate refinement
    refined: bool = False                # coordinates refined against the PDF
    shift_rms: float = 0.0               # RMS atom displacement the refinement made (A)


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


@dataclass(frozen=True)
class RefineConfig:
    """Real-space refinement of the recovered candidates (``cbldm.runtime.refine``).

    ``top``: how many candidates, best first after the size fit, get their coordinates
    refined against the PDF (0 = none); ``maxiter``: L-BFGS iterations each; ``max_shift``:
    how far (A) any coordinate may move; ``min_distance``: closest allowed approach of two
    atoms, as a fraction of the PDF's first-shell distance."""

    top: int = 4
    maxiter: int = 100
    max_shift: float = 1.0
    min_distance: float = 0.9  # no generated cluster has a pair below 0.96

    def __post_init__(self) -> None:
        if self.top < 0 or self.maxiter < 1 or self.max_shift <= 0 or self.min_distance < 0:
            raise ValueError(f"refinement needs top >= 0, maxiter >= 1, max_shift > 0 and "
                             f"min_distance >= 0, got {self.as_dict()}")

    def as_dict(self) -> dict:
        return {"top": self.top, "maxiter": self.maxiter, "max_shift": self.max_shift,
                "min_distance": self.min_distance}


NO_REFINEMENT = RefineConfig(top=0)


def predict(nets: Networks, g: np.ndarray, sampler: SamplerConfig, candidates: int = 4,
            element: str = "Au", seed: int = 0, schedule: Schedule | None = None,
            refine_size: bool = True, t: float = KERNEL_WIDTH,
            refine: RefineConfig = RefineConfig()) -> Prediction:
    """Sample ``candidates`` structures for one PDF (G on the model grid, 3000 points)."""
    return predict_batch(nets, np.asarray(g)[None], sampler, candidates, [element], seed,
                         schedule, refine_size, t, refine)[0]


def predict_batch(nets: Networks, gs: np.ndarray, sampler: SamplerConfig, candidates: int = 4,
                  elements: list[str] | None = None, seed: int = 0, schedule: Schedule | None = None,
                  refine_size: bool = True, t: float = KERNEL_WIDTH,
                  refine: RefineConfig = RefineConfig()) -> list[Prediction]:
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

    calc, refiner = _calculator()
    results = []
    for i in range(p_n):
        t0 = time.perf_counter()
        out = [_candidate(blocks[i * candidates + k], gs[i], calc, elements[i], refine_size, t,
                          d_nn[i] / D_REF) for k in range(candidates)]
        out.sort(key=lambda c: c.rwp)
        tm = {k: v / p_n for k, v in timings.items()} | {"recover_s": time.perf_counter() - t0}
        if refine.top > 0:
            t0 = time.perf_counter()
            out[:refine.top] = [_refine(c, gs[i], calc, refiner, elements[i], refine, d_nn[i])
                                for c in out[:refine.top]]
            # physical structures first: an unrefined candidate beyond ``top`` with atoms on
            # top of each other must not outrank one that was cleaned up at some cost in Rwp
            dmin = refine.min_distance * float(d_nn[i])
            out.sort(key=lambda c: (min_pair_distance(c.xyz) < 0.99 * dmin, c.rwp))
            tm["refine_s"] = time.perf_counter() - t0
        results.append(Prediction(out, tm, sampler.as_dict() | {
            "candidates": candidates, "seed": seed, "refine_size": refine_size,
            "refine": refine.as_dict()}))
    return results


_CALC: tuple | None = None


def min_pair_distance(xyz: np.ndarray) -> float:
    """The shortest interatomic distance (inf for fewer than two atoms)."""
    from scipy.spatial.distance import pdist

    return float(pdist(xyz).min()) if len(xyz) > 1 else float("inf")


def _calculator() -> tuple[DebyePDF, PDFRefiner]:
    # the refiner's kernel and linear map take ~0.5 s to build: once per process
    global _CALC
    if _CALC is None:
        calc = DebyePDF(DEEPSTRUC_PARAMS)
        _CALC = (calc, PDFRefiner(calc))
    return _CALC


def _refine(c: Candidate, g_obs: np.ndarray, calc: DebyePDF, refiner: PDFRefiner, element: str,
            cfg: RefineConfig, d_nn: float) -> Candidate:
    if c.n_atoms < 2:
        return c
    dmin = cfg.min_distance * float(d_nn)
    ref = refiner.refine(c.xyz, g_obs, maxiter=cfg.maxiter, max_shift=cfg.max_shift,
                          min_distance=dmin)
    # a candidate with atoms on top of each other takes the refined (separated) structure
    # even at some cost in Rwp; a physical one only if the fit improved
    clash = min_pair_distance(c.xyz) < dmin
    if ref.iterations == 0 or not (clash or ref.rwp < c.rwp):
        return c
    g = calc.calc(ref.xyz, element, method="histogram")
    start = c.xyz - c.xyz.mean(axis=0)
    shift = float(np.sqrt(np.mean(np.sum((ref.xyz - start) ** 2, axis=1))))
    return replace(c, xyz=ref.xyz, rwp=rwp(g_obs, g), g_calc=g * best_scale(g_obs, g),
                   rwp_size_fit=c.rwp, refined=True, shift_rms=shift)


def _candidate(blocks: np.ndarray, g_obs: np.ndarray, calc: DebyePDF, element: str,
               refine_size: bool, t: float, frame: float) -> Candidate:
    """``frame``: d / D_REF, the factor from the networks' frame back to angstroms."""
    w = from_blocks(np.asarray(blocks, dtype=np.float64))
    n = max(count_atoms(w, t), 1)
    rec = recover_xyz(unit_diagonal(w[:n, :n]), t=t)
    xyz = rec.xyz * frame
    g_calc = calc.calc(xyz, element, method="histogram")
    s, r = 1.0, rwp(g_obs, g_calc)
    r_raw = r
    if refine_size and n > 1:
        s, r, g_calc = _fit_size(xyz, g_obs, calc, element, r, g_calc)
    g_scaled = g_calc * best_scale(g_obs, g_calc)
    return Candidate(xyz * s, n, r, r_raw, s, g_scaled, rec.loss, rwp_size_fit=r)
