"""Real-space refinement: move the atoms of a candidate until its PDF fits the data.

The networks hand back a structure that is usually the right shape with positions off by
0.05-0.3 A. At Qmax 25 A^-1 and Biso 0.3 A^2 the PDF peaks are ~0.1 A wide, so such errors
alone leave Rwp at 0.3-0.8 even when every atom is in the right place to within a bond
length. This is the step a crystallographer runs next anyway (a PDFgui / DiffPy-CMI
real-space fit); here it is the same calculator as ``cbldm.runtime.pdf`` with an analytic
gradient, so a 256-atom cluster refines in about a second.

Objective: Rwp^2 with the scale profiled out (the same Rwp the pipeline reports),
minimised over all coordinates with L-BFGS. The forward model is the ``histogram``
Debye sum of ``DebyePDF`` (pair distances binned on a 1e-3 A grid with linear weights):

    F   = (2/N) sum_p [(1 - w_p) K[l_p] + w_p K[l_p + 1]] * DW(Q)
    G   = T F                      (T: Qmin cut, sine FFT, interpolation, Qdamp; linear)

so dF/dd_p = (K[l_p + 1] - K[l_p]) / h * DW is the exact derivative of what is evaluated
(no finite differences, no mismatch between function and gradient for the line search).
Single-element clusters only (f_i f_j / <f>^2 = 1), which is what the pipeline predicts.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize

from cbldm.runtime.pdf import DebyePDF


CLASH_WEIGHT = 10.0  # per A^2 of intrusion: 0.1 A inside costs as much as Rwp 0.3
# Bond restraints: the pairs bonded at the start (within 1.2 bond lengths) are held near the
# fitted bond length, mean squared deviation x this weight added to Rwp^2: 0.1 A RMS costs as
# much as Rwp 0.1. Free coordinates otherwise absorb what the physics model lacks (noise,
# Qdamp, thermal motion) and let wrong structures fit better than the right one.
RESTRAINT_WEIGHT = 1.0   # per A^2
RESTRAINT_REACH = 1.2


def _binned(d: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Pair distances ``d`` on bins of ``h`` with linear weights: lower bin, weight of the upper
    one, bins used, histogram."""
    xs = d / h
    lo = np.floor(xs).astype(np.int64)
    w = xs - lo
    nb = int(lo.max()) + 2 if len(lo) else 1
    hist = np.bincount(lo, weights=1.0 - w, minlength=nb)
    hist += np.bincount(lo + 1, weights=w, minlength=nb)
    return lo, w, nb, hist


def _scatter(iu: np.ndarray, ju: np.ndarray, gpair: np.ndarray, n: int) -> np.ndarray:
    """Per-pair gradient vectors (on atom i, minus on atom j) summed per atom, (n, 3)."""
    grad = np.empty((n, 3))
    for k in range(3):  # bincount scatters ~10x faster than np.add.at
        grad[:, k] = np.bincount(iu, gpair[:, k], minlength=n) - np.bincount(ju, gpair[:, k], minlength=n)
    return grad


@dataclass
class Refinement:
    xyz: np.ndarray     # (N, 3) refined coordinates
    rwp: float          # Rwp after refinement (scale fitted), histogram calculator
    rwp_start: float    # Rwp of the starting coordinates, same calculator
    iterations: int
    seconds: float


class PDFRefiner:
    """Coordinates -> Rwp^2 and its gradient against one observed PDF, for one calculator.

    Build once per calculator (it caches the linear map T and the sine kernel) and call
    ``refine`` for any number of structures.
    """

    def __init__(self, calc: DebyePDF | None = None, stride: int = 4, *, T: np.ndarray | None = None,
                 K: np.ndarray | None = None, h: float | None = None):
        if calc is not None:
            # Bins of stride x 1e-3 A: the sine kernel varies on 2 pi / Qmax = 0.25 A, so linear
            # interpolation at 4e-3 A is still ~1e-3 accurate, and the two kernel products
            # (the whole cost) shrink by the stride. The reported Rwp is recomputed by the
            # calculator itself afterwards.
            h = calc.HIST_STEP * stride
            # G is linear in F: the columns of T are the PDFs of unit F vectors.
            T = calc._fq_to_gr(np.eye(calc.nq)).T                          # (n_r, nq)
            dw = np.exp(-0.5 * 2.0 * calc.params.uiso * calc.q**2)       # Debye-Waller
            K = calc._hist_kernel()[::stride] * dw[None, :]               # (n_bins, nq)
        self.calc = calc
        self.h = float(h)
        self.T = np.ascontiguousarray(T)
        self.K = np.ascontiguousarray(K)
        self.rmax_pair = (len(self.K) - 2) * self.h
        self._pair_cache: tuple = (-1, None)

    @classmethod
    def for_fit(cls, grid, fit, reach: float | None = None) -> "PDFRefiner":
        """The objective of a physics fit (``cbldm.runtime.fitting``): the file's Q range and
        fit range, the fitted Biso, delta2 (exact per bin) and Qdamp; coordinates in A.
        ``reach`` (A): no pair distance will exceed it (the structure's longest pair, plus what
        the refinement's box lets it grow): the kernel stops there. The same objective, with
        the kernel of a small particle on data to 150 A a tenth the size (~0.4 GB in full)."""
        u = fit.biso / (8.0 * math.pi**2)
        nb = len(grid.K) if reach is None else min(len(grid.K), int(math.ceil(reach / grid.h)) + 3)
        rb = np.arange(nb) * grid.h
        with np.errstate(divide="ignore"):
            corr = np.where(rb > 0, np.clip(1.0 - fit.delta2 / np.maximum(rb, 1e-9) ** 2, 0.0, None), 0.0)
        K = grid.K[:nb] * np.exp(-np.outer(corr * u, grid.q2))
        env = np.exp(-0.5 * (grid.r_fit * fit.qdamp) ** 2)
        return cls(T=(grid.T * env[None, :]).T, K=K, h=grid.h)

    def _pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pair_cache[0] != n:
            self._pair_cache = (n, np.triu_indices(n, k=1))
        return self._pair_cache[1]

    def loss(self, x_flat: np.ndarray, g_obs: np.ndarray, gg: float,
             min_distance: float = 0.0, restraint: tuple | None = None) -> tuple[float, np.ndarray]:
        """Rwp^2 (scale profiled out) + clash penalty + bond restraints, and the gradient.
        ``restraint``: (mask over the i<j pairs, bond length A, weight) or None."""
        x = x_flat.reshape(-1, 3)
        n = len(x)
        iu, ju = self._pairs(n)
        diff = x[iu] - x[ju]
        d = np.sqrt(np.sum(diff * diff, axis=1))
        # Atoms closer than min_distance are unphysical but cost the PDF fit little (a pair
        # at 0.7 A puts one small peak where the data has none; on measured data, whose
        # low-r region the model does not describe, the fit even seeks such pairs): a
        # stiff hard-core penalty that outweighs any Rwp^2 gain.
        close = d < min_distance
        penalty = CLASH_WEIGHT * float(np.sum((min_distance - d[close]) ** 2))
        dpen = np.zeros_like(d)
        dpen[close] = -2.0 * CLASH_WEIGHT * (min_distance - d[close])
        if restraint is not None:
            mask, bond, weight = restraint
            dev = d[mask] - bond
            m = max(1, len(dev))
            penalty += weight * float(dev @ dev) / m
            dpen[mask] += 2.0 * weight * dev / m
        # pairs beyond the calculator's range do not enter G; keep them out of the gradient
        keep = d < self.rmax_pair
        iu, ju, diff, d, dpen = iu[keep], ju[keep], diff[keep], d[keep], dpen[keep]
        lo, w, nb, hist = _binned(d, self.h)
        # only the kernel rows up to the longest pair distance take part (a 3 nm cluster
        # uses half of them)
        kern = self.K[:nb]
        f = (2.0 / n) * (hist @ kern)
        g = self.T @ f
        hh = float(g @ g)
        if hh <= 0:
            return 1.0 + penalty, np.zeros_like(x_flat)
        s = max(0.0, float(g_obs @ g) / hh)
        res = g_obs - s * g
        value = float(res @ res) / gg + penalty
        # scale profiled out: by the envelope theorem dL/dg = -2 s res / gg at the optimum
        v = self.T.T @ (-2.0 * s * res / gg)
        psi = (2.0 / n) * (kern @ v)
        dd = (psi[lo + 1] - psi[lo]) / self.h + dpen
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(d[:, None] > 0, diff / d[:, None], 0.0)
        gpair = dd[:, None] * u
        return value, _scatter(iu, ju, gpair, n).ravel()

    def refine(self, xyz: np.ndarray, g_obs: np.ndarray, maxiter: int = 200,
               max_shift: float | None = 0.5, min_distance: float = 0.0,
               bond: float | None = None, restraint_weight: float = RESTRAINT_WEIGHT) -> Refinement:
        """L-BFGS on all coordinates. ``max_shift`` (A) boxes every coordinate around its
        start: the fit corrects positions, it does not get to invent a different cluster.
        ``min_distance`` (A): pairs closer than this are pushed apart (see ``loss``).
        ``bond`` (A): restrain the pairs bonded at the start to this length.
        ``rwp`` and ``rwp_start`` are the Rwp alone, without the penalties."""
        t0 = time.perf_counter()
        x0 = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        g_obs = np.asarray(g_obs, dtype=np.float64)
        gg = float(g_obs @ g_obs)
        n = len(x0)
        if n < 2 or gg <= 0 or not np.all(np.isfinite(g_obs)):
            r = math.inf if gg <= 0 else 1.0
            return Refinement(x0.copy(), r, r, 0, time.perf_counter() - t0)
        restraint = None
        if bond is not None and restraint_weight > 0:
            iu, ju = self._pairs(n)
            d0 = np.linalg.norm(x0[iu] - x0[ju], axis=1)
            restraint = (d0 < RESTRAINT_REACH * bond, float(bond), float(restraint_weight))
        penalised = min_distance > 0 or restraint is not None
        l0, _ = self.loss(x0.ravel(), g_obs, gg, min_distance, restraint)
        bounds = None
        if max_shift is not None:
            flat = x0.ravel()
            bounds = list(zip(flat - max_shift, flat + max_shift))
        res = optimize.minimize(self.loss, x0.ravel(), args=(g_obs, gg, min_distance, restraint), jac=True,
                                method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": maxiter, "ftol": 1e-10, "gtol": 1e-9,
                                         "maxcor": 20})
        # the reported Rwp leaves the penalties out; without any, l0 already is Rwp^2
        r0 = math.sqrt(self.loss(x0.ravel(), g_obs, gg)[0] if penalised else l0)
        if not (np.isfinite(res.fun) and res.fun <= l0):
            return Refinement(x0.copy(), r0, r0, int(res.nit), time.perf_counter() - t0)
        x = res.x.reshape(n, 3)
        r1 = math.sqrt(self.loss(res.x, g_obs, gg)[0] if penalised else res.fun)
        return Refinement(x - x.mean(axis=0), r1, r0, int(res.nit), time.perf_counter() - t0)


# Homogeneous strain: x' = x (I + E), E symmetric (6 numbers; a rotation does not change a PDF).
# A real particle's lattice is rarely the ideal one scaled: hcp metals have c/a from 1.58 (Ru,
# Os) to 1.89 (Cd) against the ideal 1.633 of the library's hcp entries, supports and ligands
# strain particles by a few per cent along some axes. An isotropic size cannot follow that, and
# the misfit it leaves grows with r (a 40 A rod 2 % longer along c is 0.8 A off at its end,
# against 0.1 A wide peaks), so the searches then re-cut the structure into a wrong one that
# fits the stretched distances better.
STRAIN_SPAN = 0.05      # +-5 % per component: beyond any strain a metal particle holds elastically
STRAIN_REACH = (8.0, 16.0)   # A: the r ranges the strain is fitted over first (fit_strain)
STRAIN_START = 0.015   # the orthorhombic strains the first range also starts from (fit_strain)
STRAIN_PAIR_MARGIN = 3.0   # A: pairs beyond a short range's end that still enter its fit
STRAIN_START_ITER = 25  # L-BFGS steps per start: the best start goes on over the next range
STRAIN_PARAMS = 5       # what a strained fit adds to the rigid one (the isotropic part is the size)
_STRAIN_IDX = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class StrainFit:
    xyz: np.ndarray     # (N, 3) strained coordinates, centred
    strain: np.ndarray  # (3, 3) symmetric E: x' = x (I + E)
    biso: float         # the physics the strain was fitted with (Biso, Qdamp; delta2 held)
    qdamp: float
    rwp: float          # Rwp strained (binned model, scale profiled out)
    rwp_start: float    # the rigid fit's (``fit.rwp``)
    iterations: int


def strain_matrix(e: np.ndarray) -> np.ndarray:
    """The symmetric 3 x 3 E of the six numbers (exx, eyy, ezz, eyz, exz, exy)."""
    m = np.zeros((3, 3))
    for k, (a, b) in enumerate(_STRAIN_IDX):
        m[a, b] = m[b, a] = e[k]
    return m


def fit_strain(grid, fit, xyz: np.ndarray, g_obs: np.ndarray, span: float = STRAIN_SPAN,
               maxiter: int = 200) -> StrainFit:
    """The homogeneous strain of ``xyz`` (about its centroid) that best fits ``g_obs``, refined
    together with Biso and Qdamp from ``fit``'s and delta2 = 0: L-BFGS on eight numbers, the
    strain's gradient from the coordinates' (dL/dE_ab = sum_i x_ia dL/dx'_ib, symmetrised).
    The caller fits the whole physics again on the strained structure.

    Jointly and from delta2 = 0, because the physics fitted to the unstrained structure has
    already widened the peaks (Biso, delta2, Qdamp up) to hide the misplaced distances: with
    it held the strain fit stops halfway (four alternations of the two took a strained hcp
    rod from Rwp 0.078 to 0.015; this fit reaches 0.0097 at once)."""
    from cbldm.runtime.fitting import BISO_RANGE, QDAMP_RANGE

    x0 = np.asarray(xyz, float)
    x0 = x0 - x0.mean(axis=0)
    g_obs = np.asarray(g_obs, float)
    gg = float(g_obs @ g_obs)
    n = len(x0)
    base = PDFRefiner.for_fit(grid, replace(fit, qdamp=0.0, delta2=0.0))   # Biso in K, no envelope
    T, K, h = base.T, base.K, base.h
    q2, r2 = grid.q2, grid.r_fit**2
    c8 = 8.0 * math.pi**2
    iu, ju = np.triu_indices(n, k=1)

    def loss(p, nr, go, gg, iu=iu, ju=ju):
        """Rwp^2 over the first ``nr`` points of the fit range, ``go`` the data there."""
        e, db, qd2 = p[:6], p[6], p[7]
        x = x0 @ (np.eye(3) + strain_matrix(e))
        diff = x[iu] - x[ju]
        d = np.sqrt(np.sum(diff * diff, axis=1))
        keep = d < base.rmax_pair
        a, b, diff, d = iu[keep], ju[keep], diff[keep], d[keep]
        lo, w, nb, hist = _binned(d, h)
        kern = K[:nb]
        dw = np.exp(-q2 * db / c8)
        f = (2.0 / n) * (hist @ kern) * dw
        env = np.exp(-0.5 * r2[:nr] * qd2)
        g = (T[:nr] @ f) * env
        hh, c = float(g @ g), float(go @ g)
        if hh <= 0 or c <= 0:
            return 1.0, np.zeros(8)
        val = 1.0 - c * c / (hh * gg)
        vg = -2.0 * c / (hh * gg) * (go - (c / hh) * g)      # dL/dG
        vf = T[:nr].T @ (vg * env)                             # dL/dF
        grad = np.zeros(8)
        grad[7] = float(vg @ (g * (-0.5 * r2[:nr])))
        grad[6] = float(vf @ (f * (-q2 / c8)))
        psi = (2.0 / n) * (kern @ (vf * dw))
        dd = (psi[lo + 1] - psi[lo]) / h
        gpair = (dd / np.maximum(d, 1e-12))[:, None] * diff
        m = x0.T @ _scatter(a, b, gpair, n)
        grad[:6] = [m[i, j] if i == j else m[i, j] + m[j, i] for i, j in _STRAIN_IDX]
        return val, grad

    qd_held = grid.phys.qdamp
    p = np.r_[np.zeros(6), 0.0, fit.qdamp**2]
    full = len(r2)
    l0, _ = loss(p, full, g_obs, gg)
    if n < 4 or gg <= 0:
        r = math.sqrt(l0) if gg > 0 else math.inf
        return StrainFit(x0, np.zeros((3, 3)), fit.biso, fit.qdamp, r, r, 0)
    bounds = [(-span, span)] * 6 + [(BISO_RANGE[0] - fit.biso, BISO_RANGE[1] - fit.biso),
                                    (QDAMP_RANGE[0] ** 2, QDAMP_RANGE[1] ** 2) if qd_held is None
                                    else (qd_held**2, qd_held**2)]
    # The r range widens in steps: a strain of 2 % moves a pair at 20 A by 0.4 A, past the next
    # peak of a lattice, where the full-range misfit has minima at wrong strains; up to
    # STRAIN_REACH[0] A every pair is within a peak width of where it belongs.
    # A structure with cubic (or icosahedral) symmetry has a PDF whose gradient in the strain is
    # isotropic at zero strain: zero once the size is fitted, a saddle the optimiser never leaves.
    # A tetragonal start keeps two axes alike and stops at the next saddle, so the first, short
    # range also starts from the six orthorhombic strains (+s, 0, -s) along the axes.
    # Only axis-aligned starts: a stretch along axes other than the structure's is not found
    # (tests/test_strain.py, xfail; six more shear starts found it in part, not evaluated).
    starts = [np.zeros(6)] + [np.r_[np.array(perm) * STRAIN_START, 0.0, 0.0, 0.0]
                              for perm in itertools.permutations((1.0, 0.0, -1.0))]
    d0 = np.linalg.norm(x0[iu] - x0[ju], axis=1)
    nit = 0
    for reach in (*STRAIN_REACH, math.inf):
        nr = int(np.searchsorted(grid.r_fit, reach, side="right"))
        if reach < math.inf and (nr < 50 or nr == full):
            continue
        go = g_obs[:nr]
        pairs = (iu, ju)
        if reach < math.inf:
            # pairs far beyond the range reach it only through their termination ripples
            near = d0 < (reach + STRAIN_PAIR_MARGIN) / (1.0 - span)
            pairs = (iu[near], ju[near])
        # the starts take a few steps each on a short range; on the full range (a fit range
        # ending below STRAIN_REACH[0]) the best of them must still converge
        few = len(starts) > 1 and reach < math.inf
        best = None
        for e in starts:
            res = optimize.minimize(loss, np.r_[e, p[6:]], args=(nr, go, float(go @ go), *pairs), jac=True,
                                    method="L-BFGS-B", bounds=bounds,
                                    options={"maxiter": STRAIN_START_ITER if few else maxiter,
                                             "ftol": 1e-10, "gtol": 1e-9})
            nit += int(res.nit)
            if best is None or res.fun < best.fun:
                best = res
        p, starts = best.x, [best.x[:6]]
    val = loss(p, full, g_obs, gg)[0]
    # l0 is the start with delta2 = 0 (this model's); rwp_start reports the fit's own Rwp
    if not (np.isfinite(val) and val < l0):
        return StrainFit(x0, np.zeros((3, 3)), fit.biso, fit.qdamp, math.sqrt(l0), fit.rwp, nit)
    e = strain_matrix(p[:6])
    return StrainFit(x0 @ (np.eye(3) + e), e, fit.biso + float(p[6]), math.sqrt(max(p[7], 0.0)),
                     math.sqrt(val), fit.rwp, nit)
