"""Fitting a structure to a measured PDF with the file's own physics, as PDFgui users do.

A reduction program states Qmin and Qmax (PDFgetX3 ``qmin``/``qmax``, xPDFsuite the same);
the instrument resolution (Qdamp), thermal motion (Biso) and correlated motion (delta2) are
not known in advance and are refined with the structure, as are the scale and the particle's
size (an isotropic expansion). The fit uses only the r range the file has data for: never
the zeros a resampler puts beyond it.

Forward model (one element; ``cbldm.runtime.pdf`` for the calculator it mirrors):

    F(Q) = (2/N) sum_pairs sin(Q s r)/(s r) exp(-Q^2 U (1 - delta2 / (s r)^2))
    G(r) = env(r) T F,   env = exp(-(Qdamp r)^2 / 2)

with T the calculator's linear map (Qmin cut, zero-padded sine FFT, interpolation onto r).
For speed the pair distances at size s are binned (4e-3 A, linear weights) and
exp(Q^2 U delta2 / r^2) is expanded to ninth order: F = e^{-Q^2 U} sum_j a^j / j! F_2j,
a = U delta2 Q^2, where F_2j = (hist / r^2j) @ K are ten matrix-vector products per size.
So (Biso, delta2, Qdamp, scale) are fitted in ~0.3 ms per evaluation and the size on a
grid. tests/test_fitting.py compares the model with the exact calculator.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize

from cbldm.runtime.pdf import DebyePDF, PDFParams

FIT_RMIN = 1.5          # A: below the first shell a measured G(r) holds only ripples and noise
HIST_STRIDE = 4         # 4e-3 A bins (the refiner's; sine kernel accurate to ~1e-3)
BISO_RANGE = (0.05, 3.0)
DELTA2_RANGE = (0.0, 5.0)
TAYLOR_TERMS = 10       # exp(a / r^2) to a^9 / 9!: within 0.004 in Rwp of the exact sum up to
                        # Biso 3, delta2 5 (6 terms were 0.03 off there)
QDAMP_RANGE = (0.0, 0.08)
MAX_QMAX = 60.0         # 1/A: spallation sources reach 50-60, X-ray PDF 20-45; a Qmax in 1/nm (x 10) lies beyond
MIN_QMAX = 5.0          # 1/A: below it a metal's first shell (2.3-3.3 A) is no peak (its width ~3.8 / Qmax)
# DiffPy cuts F(Q) at Qmin and Qmax on a Q grid of step pi / (rmax + extension), the
# extension growing with the largest Uiso: the cut lands up to one step (~0.1 1/A) above Qmin,
# at a place that depends on the Biso the file was *made* with. The fit's model must cut where
# the file's maker did, or the missing sliver of low-Q signal is a ripple of every r that no
# physics parameter absorbs: with the grid of Biso 3 (before 2026-11-27) the true structures
# of the 12 DiffPy reference files fitted to Rwp 0.001-0.037 (spurious Qdamp 0.01-0.03; thin
# rods and small clusters worst, enough to rank a longer hcp rod above the true one); with the
# grid of their Biso, 0.3, to 0.0001-0.0003 (tests/test_fitting.py). So the first fits use the
# grid of Biso 0.3 (DeepStruc's simulations; room-temperature metal particles) and the
# pipeline fits again on the grid of the Biso the best candidate found when that grid cuts
# elsewhere (``grid_for``; the Qmax cut, nq steps up, moves with almost any Biso, so most files
# are fitted twice). Measured data are cut by their reduction program on its own fine grid:
# there the choice is one of two close approximations. The pairs counted are DiffPy's at the
# grid's Biso (``FitGrid``).
QGRID_BISO = 0.3
SIZE_SPAN = 0.03        # +-3 %: the first-shell peak fixes the bond length to about 1 %


@dataclass(frozen=True)
class FilePhysics:
    """What the data reduction fixed: Q range, and the r range the fit may use."""

    qmin: float
    qmax: float
    rmin: float           # fit range, A
    rmax: float
    rstep: float = 0.01
    # the instrument resolution when it is known (calibrated on a standard such as Ni or CeO2):
    # then it is held, else refined per candidate. Free, it trades off against the particle's
    # size (a larger particle under a stronger envelope looks like a smaller one)
    qdamp: float | None = None
    source: dict = field(default_factory=dict)   # where each value came from, in words (the JSON's fit.from)
    # ... and as a word the code branches on ("qmin", "qmax": option, header, band_edge, fitted, default)
    origin: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhysicsFit:
    """A structure fitted to the data: size factor, physics and scale, and the fit's quality."""

    size: float           # isotropic expansion applied to the structure
    biso: float
    delta2: float
    qdamp: float
    scale: float
    rwp: float
    g_calc: np.ndarray    # on the fit grid, scaled to the data
    at_bounds: list[str] = field(default_factory=list)
    # anisotropic strain applied to the structure (symmetric, traceless: the isotropic part is
    # ``size``), or None (cbldm.runtime.refine.fit_strain)
    strain: np.ndarray | None = None

    def params(self) -> dict:
        return {"size_factor": round(self.size, 5), "biso_A2": round(self.biso, 4),
                "delta2_A2": round(self.delta2, 4), "qdamp_invA": round(self.qdamp, 5),
                "scale": float(self.scale),
                # principal strains, largest first: how far the lattice is from the ideal one scaled
                "strain_principal": None if self.strain is None else
                [round(float(v), 5) for v in np.linalg.eigvalsh(self.strain)[::-1]]}


class FitGrid:
    """The fit's r grid (the file's range at 0.01 A) and the calculator pieces for its Q range.

    Build once per file; ``fit`` any number of structures against it."""

    def __init__(self, phys: FilePhysics, qgrid_biso: float = QGRID_BISO):
        self.phys = phys
        self.qgrid_biso = qgrid_biso
        # the Q grid DiffPy uses at Biso ``qgrid_biso`` (where it cuts at Qmin and Qmax), and the
        # pairs it sums: those up to its rcalchi (rmax plus the extension of that Biso). Pairs
        # farther apart on a Q grid of step pi / rcalchi fold back into the fitted range: counted
        # (to the extension of Biso 3, before 2026-11-28) they were a misfit that no parameter
        # absorbs, for every particle longer than ~rmax + 2 A: an hcp prism 47 A long with three
        # vacancies, data to 30 A, fitted 0.0031 where DiffPy's own sum of it leaves 2e-4; now
        # 1.6e-4. In measured data such pairs do not fold back at all (the reduction program's Q
        # grid is fine); leaving them out loses only their termination ripples
        self.calc = DebyePDF(PDFParams(rmin=0.0, rmax=phys.rmax + phys.rstep, rstep=phys.rstep,
                                       qmin=phys.qmin, qmax=phys.qmax, biso=qgrid_biso))
        self.r = self.calc.r
        self.mask = (self.r >= phys.rmin - 1e-9) & (self.r <= phys.rmax + 1e-9)
        self.h = self.calc.HIST_STEP * HIST_STRIDE
        # the calculator's histogram kernel at the fit's bin width, sin(Qr)/r (bins, nq)
        rb = np.arange(int(math.ceil(self.calc.rcalchi / self.calc.HIST_STEP)) + 2)[::HIST_STRIDE] \
            * self.calc.HIST_STEP
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.sin(np.outer(rb, self.calc.q)) / rb[:, None]
        k[0] = 0.0
        with np.errstate(divide="ignore"):
            inv2 = np.where(rb > 0, 1.0 / rb**2, 0.0)
        # one kernel: the series' powers of 1/r^2 weight the histogram instead (10 kernels of
        # a 50 A grid would hold over a gigabyte)
        self.K = k
        self.inv2 = inv2
        self.q = self.calc.q
        self.q2 = self.q**2
        self.T = self.calc._fq_to_gr(np.eye(self.calc.nq))[:, self.mask]  # (nq, n_fit)
        self.r_fit = self.r[self.mask]
        self.rmax_pair = (len(k) - 2) * self.h

    # -- forward model -------------------------------------------------------------
    @staticmethod
    def pair_histogram(xyz: np.ndarray, step: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
        """Distinct pair distances (on a 1e-4 A grid) and their counts: a 3000-atom cluster has
        4.5M pairs but, being (nearly) ideal, far fewer distinct distances; every size tried in
        a fit then costs one pass over these instead of over all pairs."""
        xyz = np.asarray(xyz, float)
        n = len(xyz)
        keys, counts = [], []
        cols = [np.ascontiguousarray(xyz[:, k]) for k in range(3)]
        for lo in range(0, n - 1, 512):
            hi = min(lo + 512, n)
            # rows lo..hi against the columns after lo only (each pair once), a coordinate at a
            # time (no (rows, n, 3) array): 2-3x faster than all pairs' norms, the same distances
            d2 = None
            for c in cols:
                t = np.subtract.outer(c[lo:hi], c[lo + 1:])
                t *= t
                d2 = t if d2 is None else d2 + t
            blk = np.sqrt(d2[np.arange(lo, hi)[:, None] < np.arange(lo + 1, n)[None]])
            k, c = np.unique(np.round(blk / step).astype(np.int64), return_counts=True)
            keys.append(k)
            counts.append(c)
        if not keys:
            return np.zeros(0), np.zeros(0)
        k, inv = np.unique(np.concatenate(keys), return_inverse=True)
        c = np.bincount(inv, np.concatenate(counts).astype(float))
        return k * step, c

    def moments(self, d: np.ndarray, n_atoms: int, size: float, weights: np.ndarray | None = None) -> np.ndarray:
        """F0, F2, F4, ... (TAYLOR_TERMS, nq) of pair distances ``d`` (with multiplicities
        ``weights``) expanded by ``size``."""
        x = d * size / self.h
        keep = x < len(self.K) - 2
        x = x[keep]
        wt = np.ones(len(x)) if weights is None else weights[keep]
        lo = np.floor(x).astype(np.int64)
        w = x - lo
        nb = int(lo.max()) + 2 if len(lo) else 2
        hist = np.bincount(lo, wt * (1.0 - w), minlength=nb) + np.bincount(lo + 1, wt * w, minlength=nb)
        weights = hist[None, :] * self.inv2[None, :nb] ** np.arange(TAYLOR_TERMS)[:, None]
        return (2.0 / n_atoms) * (weights @ self.K[:nb])

    def g(self, mom: np.ndarray, biso: float, delta2: float, qdamp: float) -> np.ndarray:
        return self._g_and_parts(mom, biso, delta2, qdamp)[0]

    def _g_and_parts(self, mom, biso, delta2, qdamp):
        u = biso / (8.0 * math.pi**2)
        a = u * delta2 * self.q2
        dw = np.exp(-self.q2 * u)
        # poly = sum_j a^j / j! F_2j and its derivative in a
        terms = [np.ones_like(a)]
        for j in range(1, len(mom)):
            terms.append(terms[-1] * a / j)
        poly = sum(t * m for t, m in zip(terms, mom))
        dpoly = sum(t * m for t, m in zip(terms[:-1], mom[1:]))
        f = dw * poly
        env = np.exp(-0.5 * (self.r_fit * qdamp) ** 2) if qdamp > 0 else None
        g = f @ self.T
        if env is not None:
            g = g * env
        return g, (u, dw, poly, dpoly, env)

    def _cost(self, p, mom, g_obs, gg, fix_delta2):
        """Rwp^2 with the scale profiled out, and its gradient in (biso, delta2, Qdamp^2).

        Qdamp enters squared (the envelope is exp(-Qdamp^2 r^2 / 2)): in Qdamp itself the
        gradient vanishes at zero and the optimiser could never leave it."""
        biso, delta2, qdamp = p[0], (0.0 if fix_delta2 else p[1]), math.sqrt(max(p[2], 0.0))
        g, (u, dw, poly, dpoly, env) = self._g_and_parts(mom, biso, delta2, qdamp)
        hh = float(g @ g)
        c = float(g_obs @ g)
        if hh <= 0 or c <= 0:
            return 1.0, np.zeros(3)
        val = 1.0 - c * c / (hh * gg)
        dg = -2.0 * c / (hh * gg) * (g_obs - (c / hh) * g)        # dL/dG
        grad = np.zeros(3)
        grad[2] = float(dg @ (g * (-0.5 * self.r_fit**2)))
        v = self.T @ (dg * env if env is not None else dg)          # dL/dF, (nq,)
        df_du = -self.q2 * dw * poly + dw * dpoly * delta2 * self.q2
        grad[0] = float(v @ df_du) / (8.0 * math.pi**2)
        if not fix_delta2:
            grad[1] = float(v @ (dw * dpoly * u * self.q2))
        return val, grad

    def _inner(self, mom, g_obs, gg, x0, fix_delta2):
        qd = self.phys.qdamp
        bounds = [BISO_RANGE, (0.0, 0.0) if fix_delta2 else DELTA2_RANGE,
                  (QDAMP_RANGE[0] ** 2, QDAMP_RANGE[1] ** 2) if qd is None else (qd**2, qd**2)]
        res = optimize.minimize(self._cost, x0, args=(mom, g_obs, gg, fix_delta2), jac=True,
                                method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": 80, "ftol": 1e-12, "gtol": 1e-10})
        return float(res.fun), np.asarray(res.x)

    # -- fit ---------------------------------------------------------------------------
    def fit(self, xyz: np.ndarray, g_obs_fit: np.ndarray, sizes: np.ndarray | None = None,
            start: tuple[float, float, float] = (0.4, 0.0, 0.02),
            fix_delta2: bool = False) -> PhysicsFit:
        """Refine size, Biso, delta2, Qdamp and scale of ``xyz`` against ``g_obs_fit`` (the data on
        ``self.r_fit``). The physics is fitted at size 1, the size scanned over ``sizes`` (default
        +-3 % in 0.5 % steps) with that physics, a parabola through the best three sizes, and
        the physics fitted again there."""
        xyz = np.asarray(xyz, float)
        if len(xyz) < 2:
            return self.fit_pairs(np.zeros(0), np.zeros(0), len(xyz), g_obs_fit, sizes, start, fix_delta2)
        d, wt = self.pair_histogram(xyz)
        return self.fit_pairs(d, wt, len(xyz), g_obs_fit, sizes, start, fix_delta2)

    def fit_pairs(self, d: np.ndarray, wt: np.ndarray, n: int, g_obs_fit: np.ndarray,
                  sizes: np.ndarray | None = None, start: tuple[float, float, float] = (0.4, 0.0, 0.02),
                  fix_delta2: bool = False) -> PhysicsFit:
        """``fit`` of a structure given as its pair distances ``d`` with multiplicities ``wt`` and
        atom count ``n``: also of a structure too large to list (``cbldm.runtime.envelope``)."""
        if self.phys.qdamp is not None:
            start = (start[0], start[1], self.phys.qdamp)
        g_obs_fit = np.asarray(g_obs_fit, float)
        gg = float(g_obs_fit @ g_obs_fit)
        if n < 2 or gg <= 0:
            return PhysicsFit(1.0, start[0], start[1], start[2], 0.0, 1.0, np.zeros_like(g_obs_fit))
        sizes = np.linspace(1 - SIZE_SPAN, 1 + SIZE_SPAN, 13) if sizes is None else np.asarray(sizes)
        x0 = np.array([start[0], start[1], start[2] ** 2], float)
        mom1 = self.moments(d, n, 1.0, wt)
        val1, p = self._inner(mom1, g_obs_fit, gg, x0, fix_delta2)
        vals = [self._cost(p, self.moments(d, n, s, wt), g_obs_fit, gg, fix_delta2)[0] for s in sizes]
        k = int(np.argmin(vals))
        # a narrow scan whose best is at its edge walks on, as far as the +-SIZE_SPAN limit
        step = float(sizes[1] - sizes[0]) if len(sizes) > 1 else 0.0
        while step > 0 and k in (0, len(sizes) - 1):
            nxt = sizes[k] + (step if k else -step)
            if abs(nxt - 1.0) > SIZE_SPAN + 1e-9:
                break
            v = self._cost(p, self.moments(d, n, nxt, wt), g_obs_fit, gg, fix_delta2)[0]
            # kept even when worse: it then brackets the minimum for the parabola below
            best, upper = vals[k], k > 0
            sizes = np.append(sizes, nxt) if upper else np.insert(sizes, 0, nxt)
            vals = vals + [v] if upper else [v] + vals
            if v >= best:
                k = k if upper else 1
                break
            k = len(sizes) - 1 if upper else 0
        s = float(sizes[k])
        step = 0.0
        if 0 < k < len(sizes) - 1:   # parabola through the three best sizes
            v0, v1, v2 = vals[k - 1:k + 2]
            den = v0 - 2 * v1 + v2
            if den > 0:
                step = float(sizes[k] - sizes[k - 1])
                s = float(sizes[k] + 0.5 * step * (v0 - v2) / den)
        if s == 1.0:     # the physics is already fitted there (a one-size fit, as the searches use)
            mom, val = mom1, val1
        else:
            mom = self.moments(d, n, s, wt)
            val, p = self._inner(mom, g_obs_fit, gg, p, fix_delta2)
        if step > 0:
            # Rwp^2 is a parabola in the size only within ~1e-3 of its minimum (a 55-atom
            # icosahedron 2.5e-4 too large fits 0.0085 instead of 0.0002), and the physics the
            # scan held was fitted at another size: the scan leaves up to 1e-3. Parabolas an
            # eighth of a step wide around the last vertex, with the physics fitted there, take
            # it out (one where the vertex was close, up to three)
            h, s0 = step / 8.0, s
            for _ in range(3):
                w0, w1, w2 = (self._cost(p, self.moments(d, n, x, wt), g_obs_fit, gg, fix_delta2)[0]
                              for x in (s - h, s, s + h))
                den = w0 - 2 * w1 + w2
                if den <= 0:
                    break
                shift = float(np.clip(0.5 * h * (w0 - w2) / den, -4 * h, 4 * h))
                s = min(max(s + shift, 1.0 - SIZE_SPAN), 1.0 + SIZE_SPAN)
                if abs(shift) < 0.5 * h:
                    break
            if s != s0:
                mom2 = self.moments(d, n, s, wt)
                val2, p2 = self._inner(mom2, g_obs_fit, gg, p, fix_delta2)
                if val2 < val:
                    mom, val, p = mom2, val2, p2
                else:
                    s = s0
        p = np.array([p[0], p[1], math.sqrt(max(p[2], 0.0))])   # back to Qdamp
        g = self.g(mom, p[0], p[1], p[2])
        hh = float(g @ g)
        scale = max(0.0, float(g_obs_fit @ g) / hh) if hh > 0 else 0.0
        rwp = math.sqrt(min(max(val, 0.0), 1.0))
        bounds = {"biso": (p[0], BISO_RANGE)}
        if self.phys.qdamp is None:
            bounds["qdamp"] = (p[2], QDAMP_RANGE)
        if not fix_delta2:
            bounds["delta2"] = (p[1], DELTA2_RANGE)
        at = [k for k, (v, (lo, hi)) in bounds.items()
              if v >= hi - 1e-6 * (hi - lo) or (k == "biso" and v <= lo + 1e-6 * (hi - lo))]
        if len(sizes) > 1 and abs(s - 1.0) >= SIZE_SPAN - 1e-9:
            at.append("size")
        return PhysicsFit(float(s), float(p[0]), float(p[1]), float(p[2]), scale, rwp, g * scale, at)


def file_physics(meta: dict, r: np.ndarray, qmin: float | None = None, qmax: float | None = None,
                 rmin: float | None = None, rmax: float | None = None,
                 default_qmin: float = 0.7, default_qmax: float = 25.0,
                 qdamp: float | None = None, g: np.ndarray | None = None) -> FilePhysics:
    """Q range from options, else the file's header (PDFgetX3/xPDFsuite ``qmin``, ``qmax``), else
    Qmax from the data's band edge (``band_edge``, given ``g``), else the training values; the fit
    range from options, else [1.5 A, the file's last r]; Qdamp from the option, else a header
    ``qdamp``, else refined."""
    src, origin = {}, {}

    def header(key):
        try:
            text = str(meta.get(key, "")).split()[0]
            if re.fullmatch(r"[-+]?\d*,\d+", text):     # '24,5': a decimal comma, as in the rows
                text = text.replace(",", ".")
            v = float(text)
        except (ValueError, IndexError):
            return None
        # Qmin may be 0 (no low-Q cut), so may Qdamp (a perfect instrument); a Qmax must be positive
        return v if math.isfinite(v) and (v > 0 or (key in ("qmin", "qdamp") and v == 0)) else None

    vals = {}
    for key, opt, default in (("qmin", qmin, default_qmin), ("qmax", qmax, default_qmax)):
        hv = header(key)
        if opt is not None:
            vals[key], src[key], origin[key] = float(opt), "option", "option"
        elif hv is not None:
            vals[key], src[key], origin[key] = hv, "file header", "header"
        else:
            said_hdr = f"the header's {key} {meta[key]!r} is not usable" if str(meta.get(key, "")).strip() \
                else "the header states none"
            edge = band_edge(r, g, FIT_RMIN if rmin is None else float(rmin)) \
                if key == "qmax" and g is not None else None
            if edge is not None and MIN_QMAX <= edge <= MAX_QMAX:
                vals[key], src[key], origin[key] = edge, f"the data's band edge ({said_hdr})", "band_edge"
            else:
                vals[key], src[key], origin[key] = default, "default (training data" + (
                    "" if said_hdr.endswith("none") else f"; {said_hdr}") + ")", "default"
    said = {k: {"option": f"--{k}", "header": "file header", "band_edge": "the data's band edge"}.get(
        origin[k], "training value") for k in vals}
    if vals["qmax"] < MIN_QMAX:
        raise ValueError(f"qmax {vals['qmax']:g} 1/A ({said['qmax']}) is too low for a PDF: a metal's first shell "
                         f"needs at least {MIN_QMAX:g} 1/A (give --qmax)")
    if vals["qmax"] > MAX_QMAX:
        raise ValueError(f"qmax {vals['qmax']:g} 1/A ({said['qmax']}) is beyond any PDF measurement's (at most "
                         f"{MAX_QMAX:g} 1/A): 1/nm? (divide by 10; give --qmax)")
    if vals["qmin"] >= vals["qmax"]:
        raise ValueError(f"qmin {vals['qmin']:g} ({said['qmin']}) is not below qmax {vals['qmax']:g} ({said['qmax']}) "
                         "(give --qmin/--qmax)")
    lo = FIT_RMIN if rmin is None else float(rmin)
    hi = float(r[-1]) if rmax is None else min(float(rmax), float(r[-1]))
    src["rmin"] = "option" if rmin is not None else f"default ({FIT_RMIN} A)"
    src["rmax"] = "option" if rmax is not None else "the file's last r"
    lo = max(lo, float(r[0]))
    if qdamp is not None:
        if not 0 <= qdamp <= QDAMP_RANGE[1]:
            raise ValueError(f"Qdamp {qdamp:g} is outside 0-{QDAMP_RANGE[1]:g} 1/A")
        qd, src["qdamp"] = float(qdamp), "option"
    else:
        # a file that states its Qdamp (DiffPy/PDFgui-written, cbldm-data pdf) was made with it
        qd, src["qdamp"] = header("qdamp"), "file header"
        if qd is None:
            src["qdamp"] = "refined"
        elif qd > QDAMP_RANGE[1]:   # like an unreadable qmax: said, and not used
            src["qdamp"] = f"refined (the header's {qd:g} is outside 0-{QDAMP_RANGE[1]:g} 1/A; give --qdamp)"
            qd = None
    return FilePhysics(vals["qmin"], vals["qmax"], round(lo, 4), round(hi, 4), qdamp=qd, source=src, origin=origin)


BAND_RSPAN = 40.0      # A of data from the fit's start read for the band edge
BAND_QHI = 50.0        # 1/A: the columns the band edge is looked for among (the top fifth: noise)
BAND_EMPTY = 1e-9      # of G's energy (sum G^2 over the fit range): a Q column holding less is empty
BAND_NOISE = 100.0     # x the noise per column: a column holding less is empty too
BAND_DROP = 1000.0     # median energy per column in the 1/A below the edge over the 1/A above it (or the noise)


def round_within(lo: float, hi: float) -> float:
    """The roundest number in (lo, hi]: a whole one, else a multiple of 0.5, 0.1, 0.05, 0.01 (the one
    nearest the middle), else the middle. A Q cut read off the data, or fitted, is known to one step
    of the Q grid; a reduction's Qmin and Qmax are set by hand, and so are round (25, 0.7, 28.0,
    22): the same number gives the fit the same Q grid (DiffPy's step follows Qmax through its r
    extension) and so the fit the header would have given."""
    mid = (lo + hi) / 2
    for unit in (1.0, 0.5, 0.1, 0.05, 0.01):
        first, last = math.floor(lo / unit + 1e-9) + 1, math.floor(hi / unit + 1e-9)
        if first <= last:
            k = min(max(round(mid / unit), first), last)
            return round(k * unit, 4)
    return round(mid, 4)


def band_edge(r: np.ndarray, g: np.ndarray, rmin: float = FIT_RMIN) -> float | None:
    """Qmax read from the data: where G(r)'s content in Q ends. A reduction program sine-transforms
    F(Q) cut at Qmax (DiffPy cuts on its Q grid), so G from ``rmin`` to its last r lies in the span
    of the calculator's own columns (``DebyePDF._fq_to_gr``, one per Q step) up to Qmax, less its
    noise. The columns are taken in rising Q and made orthonormal (QR): the square of the data's
    coefficient on each is the energy that column adds to all below it. The edge is the last column
    holding more than BAND_EMPTY of the energy and BAND_NOISE times the noise per column (the median
    of the top fifth, 40-50 1/A, where a PDF holds nothing); the cut lies between it and the next
    column, and the Qmax returned is the roundest number there (``round_within``), so that the
    fit's calculator keeps the same columns. BAND_RSPAN of data from ``rmin`` are read.

    Only the top of the band: below ~2 1/A the columns are nearly dependent on [rmin, rmax] and
    their coefficients say nothing of Qmin (``pipeline._fit_qmin``). None where no edge stands out:
    the 1/A below it must hold BAND_DROP times the energy per column of the 1/A above it. Noise on
    the r grid spreads over every Q and hides the edge once the signal near Qmax is below it (white
    noise of 0.5-2 % of the peak: the simulated test sets' noisy PDFs); a reduction program's noise
    is cut with F(Q) and leaves the edge sharp. Measured, headers stripped: the 12 DeepStruc PDFs
    (made at Qmax 25) read 25.0; JQ_S1 (22.0) 22.0; Au144 (28.0) 27.9, its last column below the
    header's holding 1e-10 of the energy."""
    r, g = np.asarray(r, float), np.asarray(g, float)
    edge = _band_edge(r, g, rmin, None)
    # DiffPy's Q step follows its r extension, which follows Qmax (six ripples of 2 pi / Qmax):
    # read again on the grid of the Qmax found, where the data's columns lie (one step is 0.1 1/A
    # at 30 A; on the grid of 50 1/A the DeepStruc PDFs' edge fell between columns)
    return _band_edge(r, g, rmin, edge) if edge is not None else None


def _band_edge(r: np.ndarray, g: np.ndarray, rmin: float, near: float | None) -> float | None:
    step = 0.01
    # BAND_RSPAN of data resolve the Q steps; more only costs (to 100 A: 9 s and 2 GB)
    rmin = max(rmin, float(r[0]))
    r_end = min(float(r[-1]), rmin + BAND_RSPAN)
    rmax = r_end + step
    if near is not None:   # the r extension of a calculator cut at ``near``, on a grid that goes on to BAND_QHI
        ext = lambda qmax: DebyePDF(PDFParams(rmin=0.0, rmax=rmax, rstep=step, qmin=0.0, qmax=qmax,  # noqa: E731
                                              biso=QGRID_BISO)).rcalchi
        rmax += ext(near) - ext(BAND_QHI)
    calc = DebyePDF(PDFParams(rmin=0.0, rmax=rmax, rstep=step, qmin=0.0, qmax=BAND_QHI, biso=QGRID_BISO))
    mask = (calc.r >= rmin - 1e-9) & (calc.r <= r_end + 1e-9)
    y = np.interp(calc.r[mask], r, g)
    yy = float(y @ y)
    if mask.sum() < 2 * calc.nq or yy <= 0:
        return None
    # the calculator's columns, a block at a time (its transform pads each to 2^14 points)
    cols = np.concatenate([calc._fq_to_gr(np.eye(calc.nq)[i:i + 128])[:, mask] for i in range(0, calc.nq, 128)])
    basis, _ = np.linalg.qr(cols.T)
    c2 = (basis.T @ y) ** 2 / yy
    top = int(0.8 * len(c2))
    noise = float(np.median(c2[top:]))
    held = np.flatnonzero(c2 > max(BAND_EMPTY, BAND_NOISE * noise))
    if not len(held) or held[-1] >= 0.75 * len(c2):
        return None
    k = int(held[-1])
    m = max(1, int(round(1.0 / calc.qstep)))
    # an edge is a drop: white noise on the r grid lets the signal sink into it column by column,
    # and the last column above BAND_NOISE x noise is then no cut (a 1 % noise on an icosahedron
    # cut at 18 1/A: 17.3, the columns above it 10-50 times the noise)
    below = float(np.median(c2[max(k - m + 1, 0):k + 1]))
    above = max(float(np.median(c2[k + 1:k + 1 + m])), noise, 1e-300)
    if below / above < BAND_DROP:
        return None
    # a calculator cut at Qmax keeps the columns below it: the cut lies between the last column held
    # and the first one empty
    return round_within(float(calc.q[k]), float(calc.q[k] + calc.qstep))


_GRIDS: dict = {}


def _qstep(phys: FilePhysics, biso: float) -> float:
    return DebyePDF(PDFParams(rmin=0.0, rmax=phys.rmax + phys.rstep, rstep=phys.rstep, qmin=phys.qmin,
                              qmax=phys.qmax, biso=biso)).qstep


def fit_grid(phys: FilePhysics, qgrid_biso: float = QGRID_BISO) -> FitGrid:
    """A FitGrid per physics (and Q grid), kept for the next file (a watch service sees the same
    reduction settings file after file; building one costs 0.1-0.5 s and holds 10-30 MB). Keyed
    on what the arrays depend on; the grid handed out carries the caller's physics (its held
    Qdamp)."""
    import copy

    key = (phys.qmin, phys.qmax, phys.rmin, phys.rmax, phys.rstep, round(_qstep(phys, qgrid_biso), 12))
    if key not in _GRIDS:
        if len(_GRIDS) >= 6:
            _GRIDS.pop(next(iter(_GRIDS)))
        _GRIDS[key] = FitGrid(phys, qgrid_biso)
    grid = _GRIDS[key] = _GRIDS.pop(key)      # least recently used goes first
    if grid.phys != phys:      # shares the arrays, which a fit only reads
        grid = copy.copy(grid)
        grid.phys = phys
    return grid


def grid_for(grid: FitGrid, biso: float) -> FitGrid | None:
    """The grid on which DiffPy would have cut a file made with ``biso``, if it cuts elsewhere
    than ``grid`` does (its Qmin or Qmax cut moves by more than a tenth of a step), else None."""
    q_new, q_old = _qstep(grid.phys, biso), grid.calc.qstep
    cut = lambda q: (math.ceil(grid.phys.qmin / q - 1e-9) * q, math.ceil(grid.phys.qmax / q - 1e-9) * q)  # noqa: E731
    if max(abs(a - b) for a, b in zip(cut(q_new), cut(q_old))) <= 0.1 * q_old:
        return None
    return fit_grid(grid.phys, biso)
