"""Diffusion schedule and samplers, written once in numpy, driven by any noise predictor.

``eps_fn(x_t, t, context) -> eps`` is all a sampler needs: the PyTorch U-Net during
training and evaluation, an ONNX Runtime or TensorRT session at the beamline.

Conventions (fixing the reference code's defects, see METHOD.md):
- T = 1000 steps indexed t = 0..T-1, t = T-1 the noisiest; training draws all of them and
  sampling starts at T-1.
- cosine schedule (Nichol & Dhariwal) with s = 5e-4: abar_t = f(t+1)/f(0),
  f(t) = cos(((t/T) + s)/(1 + s) * pi/2)^2, betas clipped at 0.999.
- DDPM uses the true posterior variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
  with sqrt() on it; strided samplers (DDIM) use the alphas of the steps they visit.

Skip-step sampler (paper Alg. 4, Eq. 8): denoise from T-1 to t1, draw x0_p from the
conditional prior, jump
    u = sqrt(1 - abar_t2) / sqrt(1 - abar_t1),  a = sqrt(abar_t2) - sqrt(abar_t1) * u,
    x_t2 = a * x0_p + u * x_t1,
then denoise t2 -> 0. t1 = t2 is a plain LDM; ``t1=None`` is prior only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

EpsFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Schedule:
    T: int = 1000
    s: float = 5e-4

    def __post_init__(self):
        steps = np.arange(self.T + 1, dtype=np.float64)
        f = np.cos(((steps / self.T) + self.s) / (1 + self.s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", 1.0 - betas)
        object.__setattr__(self, "abar", np.cumprod(1.0 - betas))  # abar[t], t = 0..T-1

    def as_dict(self) -> dict:
        return {"T": self.T, "s": self.s, "kind": "cosine"}

    @classmethod
    def from_dict(cls, doc: dict) -> "Schedule":
        """The schedule a manifest records (``as_dict``); ValueError, one line, for anything
        this code cannot rebuild exactly: another kind, a missing or an unknown key."""
        if not isinstance(doc, dict):
            raise ValueError(f"schedule must be a mapping, got {type(doc).__name__}")
        missing, unknown = sorted({"T", "s", "kind"} - set(doc)), sorted(set(doc) - {"T", "s", "kind"})
        if missing:
            raise ValueError(f"schedule lacks {', '.join(missing)}")
        if unknown:
            raise ValueError(f"schedule has keys this runtime does not know: {', '.join(unknown)}")
        if doc["kind"] != "cosine":
            raise ValueError(f"schedule kind {doc['kind']!r} is not implemented here (cosine)")
        T, s = doc["T"], doc["s"]
        # a float T would index the tables off by rounding; bool is an int to Python
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"schedule T must be an integer >= 2, got {T!r}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 <= s < 1):
            raise ValueError(f"schedule s must be a number in [0, 1), got {s!r}")
        return cls(T=T, s=float(s))

    def q_sample(self, x0: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
        a = self.abar[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
        return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise

    def abar_at(self, t: int) -> float:
        """abar for t in -1..T-1; t = -1 is clean data (abar = 1)."""
        return 1.0 if t < 0 else float(self.abar[t])


@dataclass(frozen=True)
class SamplerConfig:
    """Skip-step sampler settings. ``t1=None`` -> prior only; ``t1 == t2`` -> plain LDM."""

    t1: int | None = 900
    t2: int = 800
    steps_before: int = 10   # U-Net calls from T-1 down to t1
    steps_after: int = 20    # U-Net calls from t2 down to 0
    kind: str = "ddim"       # "ddim" (eta 0) or "ddpm" (steps must then be the full count)
    eta: float = 0.0
    clip: float | None = None  # clip each step's x0 estimate to +-clip (the latents' range)

    def as_dict(self) -> dict:
        return asdict(self)

    def unet_calls(self, T: int = 1000) -> int:
        if self.t1 is None:
            return 0
        return self.steps_before + self.steps_after


def _clip_x0(x: np.ndarray, eps: np.ndarray, a_t: float, clip: float | None):
    """x0 estimate, clipped to +-clip, and the eps consistent with it.

    Near t = T-1 abar is ~5e-9 (cosine schedule), so x0 = (x - sqrt(1-abar) eps)/sqrt(abar)
    multiplies the U-Net's error by ~1e4; without the clip one early step throws the
    trajectory thousands of standard deviations off (measured). Clipping to the range of
    the training latents is the usual remedy (DDPM's clip_denoised)."""
    x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    if clip is None:
        return x0, eps
    x0 = np.clip(x0, -clip, clip)
    return x0, (x - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)


def ddim_step(sched: Schedule, x: np.ndarray, eps: np.ndarray, t: int, t_prev: int,
              eta: float = 0.0, rng: np.random.Generator | None = None,
              clip: float | None = None) -> np.ndarray:
    """One DDIM step from t to t_prev (t_prev = -1 means to clean data)."""
    a_t, a_p = sched.abar_at(t), sched.abar_at(t_prev)
    x0, eps = _clip_x0(x, eps, a_t, clip)
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) if t_prev >= 0 else 0.0
    out = math.sqrt(a_p) * x0 + math.sqrt(max(1.0 - a_p - sigma**2, 0.0)) * eps
    if sigma > 0:
        out = out + sigma * rng.standard_normal(x.shape)
    return out


def ddpm_step(sched: Schedule, x: np.ndarray, eps: np.ndarray, t: int,
              rng: np.random.Generator, clip: float | None = None) -> np.ndarray:
    """One ancestral DDPM step t -> t-1 with the posterior variance (sqrt applied)."""
    beta, alpha, a_t = sched.betas[t], sched.alphas[t], sched.abar_at(t)
    if clip is not None:
        eps = _clip_x0(x, eps, a_t, clip)[1]
    mean = (x - beta / math.sqrt(1.0 - a_t) * eps) / math.sqrt(alpha)
    if t == 0:
        return mean
    var = beta * (1.0 - sched.abar_at(t - 1)) / (1.0 - a_t)
    return mean + math.sqrt(var) * rng.standard_normal(x.shape)


def denoise(sched: Schedule, eps_fn: EpsFn, x: np.ndarray, context: np.ndarray,
            t_start: int, t_end: int, n_steps: int, kind: str = "ddim", eta: float = 0.0,
            rng: np.random.Generator | None = None, clip: float | None = None) -> np.ndarray:
    """Run from noise level t_start down to t_end (t_end = -1: all the way to x0)."""
    b = x.shape[0]
    if kind == "ddpm":
        for t in range(t_start, t_end, -1):
            eps = eps_fn(x, np.full(b, t, np.int64), context)
            x = ddpm_step(sched, x, eps, t, rng, clip)
        return x
    if kind != "ddim":
        raise ValueError(f"unknown sampler kind {kind!r}")
    return _ddim_to(sched, eps_fn, x, context, t_start, t_end, n_steps, eta, rng, clip)


def skip_step_sample(sched: Schedule, eps_fn: EpsFn, context: np.ndarray,
                     prior_mu: np.ndarray, prior_logvar: np.ndarray, cfg: SamplerConfig,
                     rng: np.random.Generator, x_T: np.ndarray | None = None,
                     prior_noise: np.ndarray | None = None) -> np.ndarray:
    """Latents x0, shape of ``prior_mu`` (B, ...), by the skip-step sampler."""
    shape = prior_mu.shape
    if prior_noise is None:
        prior_noise = rng.standard_normal(shape)
    x0_p = prior_mu + np.exp(0.5 * prior_logvar) * prior_noise
    if cfg.t1 is None:
        return x0_p
    T = sched.T
    if not (0 <= cfg.t2 <= cfg.t1 <= T - 1):
        raise ValueError(f"need 0 <= t2 <= t1 <= {T - 1}, got t1={cfg.t1}, t2={cfg.t2}")
    x = rng.standard_normal(shape) if x_T is None else x_T
    if cfg.kind == "ddpm":
        x = denoise(sched, eps_fn, x, context, T - 1, cfg.t1, 0, "ddpm", rng=rng, clip=cfg.clip)
    else:
        x = _ddim_to(sched, eps_fn, x, context, T - 1, cfg.t1, cfg.steps_before, cfg.eta, rng, cfg.clip)
    if cfg.t1 != cfg.t2:
        a_t1, a_t2 = sched.abar_at(cfg.t1), sched.abar_at(cfg.t2)
        u = math.sqrt(1.0 - a_t2) / math.sqrt(1.0 - a_t1)
        a = math.sqrt(a_t2) - math.sqrt(a_t1) * u
        x = a * x0_p + u * x
    if cfg.kind == "ddpm":
        return denoise(sched, eps_fn, x, context, cfg.t2, -1, 0, "ddpm", rng=rng, clip=cfg.clip)
    return _ddim_to(sched, eps_fn, x, context, cfg.t2, -1, cfg.steps_after, cfg.eta, rng, cfg.clip)


def _ddim_to(sched: Schedule, eps_fn: EpsFn, x: np.ndarray, context: np.ndarray,
             t_from: int, t_to: int, n_calls: int, eta: float, rng,
             clip: float | None = None) -> np.ndarray:
    """n_calls DDIM steps from t_from to exactly t_to (t_to = -1: to x0)."""
    if t_from == t_to or n_calls <= 0:
        return x
    # n_calls evaluation points from t_from, evenly spaced, strictly above t_to
    pts = np.linspace(t_from, t_to, n_calls + 1)[:-1]
    ts = list(dict.fromkeys(np.round(pts).astype(int).tolist()))
    b = x.shape[0]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else t_to
        eps = eps_fn(x, np.full(b, t, np.int64), context)
        x = ddim_step(sched, x, eps, t, t_prev, eta, rng, clip)
    return x


def full_ddpm_sample(sched: Schedule, eps_fn: EpsFn, context: np.ndarray, shape: tuple,
                     rng: np.random.Generator, clip: float | None = None) -> np.ndarray:
    """The full 1000-call ancestral sampler (the paper's baseline cost)."""
    x = rng.standard_normal(shape)
    return denoise(sched, eps_fn, x, context, sched.T - 1, -1, 0, "ddpm", rng=rng, clip=clip)
