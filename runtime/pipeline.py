"""PDF in, ranked candidate structures out, each fitted with the file's own physics.

Sources of candidates:
- ``model``: the networks (any backend supplying four numpy callables, the exported graphs):
      condition(pdf (B,6,500))            -> cond (B,2,125)
      prior(pdf (B,6,500))                -> mu, logvar (B,1,16,16)  (diffusion space)
      unet(x (B,1,16,16), t (B,), cond)   -> eps (B,1,16,16)
      decoder(z (B,1,16,16))              -> kernel blocks (B,4,128,128)
  skip-step sampling, kernel -> xyz recovery, scaled by the first-shell distance;
- ``library``: the cluster library's best matches (``cbldm.runtime.library``).
Every candidate then gets the same treatment (``cbldm.runtime.fitting``): size, Biso,
delta2, Qdamp and scale refined against the data over the file's own r range and Q range.
The best ``STRAIN_TOP`` library entries get a homogeneous strain where it pays (``_strain``);
the best candidate goes through the atom-count and facet-layer searches
(``cbldm.runtime.search``); the best ``refine.top`` by the rigid fit get their coordinates
refined with bond restraints (``cbldm.runtime.refine``). Ranking: physical candidates (no
atoms closer than the clash distance) first, then those whose fit does not need Qdamp at its
bound (``overdamped``), then by Akaike's criterion (``criterion``). The verdict
(``cbldm.runtime.verdict``) says whether to trust it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import numpy as np

from cbldm.runtime.fitting import (MAX_QMAX, MIN_QMAX, FilePhysics, FitGrid, PhysicsFit, file_physics, fit_grid,
                                   grid_for, round_within)
from cbldm.runtime.kernel import KERNEL_WIDTH, count_atoms, from_blocks, unit_diagonal
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, rgrid
from cbldm.runtime.preprocess import D_REF, LATENT_SHAPE, N_R, R_STEP, model_input, nn_distance
from cbldm.runtime.recovery import recover_xyz
from cbldm.runtime.refine import PDFRefiner
from cbldm.runtime.sampling import SamplerConfig, Schedule, skip_step_sample
from cbldm.runtime.structure import diameter, nn_distances, nn_length
from cbldm.runtime.verdict import (EXACT_FIT, NOISE_FLOOR, NOISE_LEFT, NOISE_VISIBLE, InputRefused, Verdict,
                                   beyond_noise, check_input, first_peak_sigma, gain_bound, judge, misfit,
                                   noise_rwp, particle_extent, short_peak)

SOURCES = ("both", "model", "library")
LIBRARY_TOP = 6          # library matches fitted per PDF ...
LIBRARY_PER_MOTIF = 3    # ... at most this many of one motif (4 and 2 lost an octahedron to fcc
                         # spheres; with REFINE_NOT_NEEDED 0.005, tuning sets 45 -> 50, 3 -> 6, 0 -> 3 %)
REFINE_MAX_ATOMS = 600   # coordinate refinement above this is O(N^2) per step: rigid fit only
REFINE_NOT_NEEDED = 0.001  # best rigid fit already at this Rwp (beyond the data's noise, verdict.misfit):
                           # neither count search nor coordinates have anything to add. Ideal
                           # recipe shapes fit DiffPy's PDFs to 1e-4-level Rwp (fitting.QGRID_BISO,
                           # and the pairs DiffPy sums, fitting.FitGrid): those skip both. 0.02 left
                           # a noise-free fit at 0.018 with three atoms too many as it was; 0.005
                           # (until 2026-11-28, when the fit's model of particles longer than the
                           # data was 1e-3-level off) an octahedron with one vacancy at 0.0037
                           # (tuning set 69 -> 71 % exact at 0.001)
REFINE_REACH = 0.1        # refine candidates within max(0.1, best) of the best rigid Rwp
WALK_STEPS = 6           # moves along the best library candidate's family (``_walk``)
WALK_STRAIN_ROUNDS = 2   # a strained walk's strain fitted again where it stops, and walked on
WALK_NOT_NEEDED = 0.001  # best rigid fit's misfit below which the walk does not run: a family
                         # member that is not the data's own leaves more (a 9-layer hcp prism fitted
                         # 0.0036 by the 10-layer one the search proposed; the 9-layer one: 1e-4)
STRAIN_TOP = 4           # library candidates, best rigid fits first (within the refinement's
                         # reach), that get a homogeneous strain fitted
TIE_MARGIN = 0.2          # family members of the best fit within this fraction of its Rwp are refined
                          # too (``_tied_members``): the searches' gain, under which a fit tells nothing
TIE_STEPS = 3             # ... at most this many new members fitted along each parameter and direction
DISORDER_ITER = 300       # L-BFGS steps: the right structure keeps falling where the others level off
DISORDER_SHIFT = 0.3      # A per coordinate: the static-disorder refinement's box (``_refine``); a
                          # metal particle's static and thermal displacements are ~0.1 A RMS
DISORDER_BISO = (0.7, 0.4)  # fractions of the fitted Biso held while coordinates take the rest
DISORDER_MAX_ATOMS = 300  # the disorder refinement and the tied members above this: too slow (see ``_refine``)
EXTENT_REACH = (1.75, 5.0)  # a library entry is tried only where its own visible extent
                            # (library.visible_extent) is within a x the data's + b A: damping
                            # shortens what data show, not this much. Every true structure of the four
                            # tuning sets is within 1.52 x + 5 (156 PDFs); the bound it replaces,
                            # 2 x extent + 5 on the diameter, shut out four of their hcp rods
                            # (diameters to 2.7 x the extent), answered 16-48 atoms short
ENVELOPE_FROM_ATOMS = 1500  # the best library fit holds this many atoms or more: a lattice sphere of
                            # fitted diameter is tried beside it (``_envelope``); the library's largest
                            # clusters hold ~3,000
ENVELOPE_FROM_DIAMETER = 0.8   # ... scanned from this fraction of the diameter of a sphere of its count
MTP_MAX_ATOMS = 20_000   # icosahedra and decahedra built past the library (``_beyond``) up to this
BUILT = "built past the library's largest of its family"   # ``Candidate.via`` of those
Q_AGAIN_MAX_ATOMS = 3000      # an answer built past the library (up to 20,000 atoms) is not checked: its pairs
                              # cost seconds, and such a particle's PDF at low Q says little of its cut
QMIN_SCAN = 2.0          # 1/A: a file that states no Qmin is fitted with each Qmin of the Q grid up to this
                         # (reduction programs cut at 0.5-1.5), the best first candidate's best kept (``_fit_qmin``)
REFIT_SIGMAS = 3.0        # a fit again from above a peak of another element starts at most this many of the
                          # first peak's widths below it (``_above_short``)
CEILING_FRACTION = 0.9    # a large answer (ENVELOPE_FROM_ATOMS or more) this close to the largest library
                          # cluster of its motif is said to be at the library's ceiling (``verdict.judge``)
REFINED_PARAMS_PER_ATOM = 1.0  # what restrained refinement adds to a fit, per atom (tuning set)


def independent_points(phys: FilePhysics) -> float:
    """Independent points in the fitted PDF (Shannon/Nyquist): (rmax - rmin)(Qmax - Qmin) / pi."""
    return max((phys.rmax - phys.rmin) * (phys.qmax - phys.qmin) / math.pi, 1.0)


def _misfit(rwp: float, n_ind: float) -> float:
    """The misfit term of Akaike's criterion for a Gaussian misfit: n_ind ln Rwp^2."""
    return n_ind * math.log(max(rwp, 1e-9) ** 2)


def criterion(c: "Candidate", n_ind: float) -> float:
    """How the answer is chosen: Akaike's criterion for a Gaussian misfit, n_ind ln Rwp^2 + 2P,
    over the data's independent points. A rigid fit has the same handful of physics parameters
    for every candidate; coordinate refinement adds about REFINED_PARAMS_PER_ATOM per atom, so a
    refined fit counts only where its gain pays for them, else the candidate stands on its rigid
    fit (``justified``). A structure of the wrong size bent into the data by a large refinement
    (Rwp 0.16 -> 0.09 for a 207-atom decahedron against a 64-atom faulted fcc particle) no longer
    outranks one that fits nearly as it is (0.095). Chosen on the tuning set and the families'
    tuning twin against ranking on refined Rwp: the same exact counts, answers closer
    (pair-distance error 0.79 -> 0.73 and 1.19 -> 1.05 A), mean Rwp a little higher (0.063 ->
    0.064, 0.089 -> 0.095: fewer free parameters). Not counted: the atoms the count search
    added or removed (its own gain threshold guards it); above ~n_ind / 2 atoms refinement never
    pays, which is as meant."""
    refined = _misfit(c.rwp, n_ind) + 2.0 * REFINED_PARAMS_PER_ATOM * c.n_atoms
    if c.refined and c.start_clashed:   # the start had atoms on top of each other: no rigid fit to stand on
        return refined
    rigid = _misfit(c.rwp_rigid, n_ind)
    return min(rigid, refined) if c.refined else rigid


def justified(c: "Candidate", n_ind: float) -> "Candidate":
    """``c`` as the criterion ranks it: a refinement that does not pay for its coordinates is
    undone (the structure and physics before it are reported; its Rwp is kept as
    ``rwp_refined_unjustified``)."""
    if not c.refined or c.start_clashed or c.start_xyz is None or c.start_fit is None:
        return c
    if _misfit(c.rwp_rigid, n_ind) > criterion(c, n_ind):
        return c
    return replace(c, xyz=c.start_xyz, fit=c.start_fit, rwp=c.rwp_rigid, g_calc=c.start_fit.g_calc,
                   refined=False, disordered=False, shift_rms=0.0, start_xyz=None, start_fit=None,
                   rwp_refined_unjustified=c.rwp)


def overdamped(c: "Candidate") -> bool:
    """The fit pinned Qdamp at the top of its range: the structure's PDF had to be damped more
    than any instrument does to match the data's fall-off, i.e. it is too large for the data
    (a 409-atom decahedron under Qdamp 0.08 fitted a 117-atom twinned particle best on Rwp).
    Such candidates rank after every one whose fit stays inside the range (where the data's
    Qdamp is known it is held, and none is). On the tuning set and the families' tuning twin
    it changed 5 of 78 answers, pair-distance error 0.80 -> 0.70 A, exact counts unchanged."""
    return c.fit is not None and "qdamp" in c.fit.at_bounds


class Networks(Protocol):
    condition: Callable[[np.ndarray], np.ndarray]
    prior: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    unet: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    decoder: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RefineConfig:
    """Coordinate refinement of the best candidates after their physics fit.

    ``top``: how many candidates, best first by the rigid fit, get their coordinates refined
    (0 = none); ``maxiter``: L-BFGS iterations each; ``max_shift``: how far (A) any coordinate
    may move; ``min_distance``: closest allowed approach of two atoms, as a fraction of the
    PDF's first-shell distance; ``restrain``: hold bonded pairs near the fitted bond length;
    ``rank``: how the answer is chosen, ``criterion`` (``criterion``: a refinement must pay for
    its coordinates) or ``rwp`` (lowest Rwp after refinement, as before 2026-11-27; kept to
    compare)."""

    top: int = 4
    maxiter: int = 100
    max_shift: float = 1.0
    min_distance: float = 0.9  # no generated cluster has a pair below 0.96
    restrain: bool = True
    search: int = 1            # atom-count and layer searches (cbldm.runtime.search) from the best fit and
                               # the next best fits of other atom counts, N in all (1: the best only)
    search_gain: float = 0.2   # ...kept when it lowers Rwp (beyond the noise: verdict.gain_bound) by this
                               # fraction (chosen on the tuning set, noise-free and noisy alike then)
    rank: str = "criterion"
    strain: bool = True        # fit a homogeneous strain to the candidates before the searches
    walk: bool = True          # walk the best library candidate's family (``_walk``) before them
    disorder: bool = True      # also refine with part of Biso left to the coordinates (``_refine``)
    envelope: bool = True      # a lattice sphere of fitted diameter where the best fit is a large cluster
                               # (``_envelope``), and its icosahedron or decahedron family walked past the
                               # library (``_beyond``)
    above_short: bool = True   # fit again from above a peak of another element the answer leaves
                               # (``verdict.short_peak``; ``_above_short``)
    workers: int = 1           # candidates refined side by side (threads: the work is in BLAS and numpy
                               # loops, which let go of the GIL); the answer does not depend on it

    def __post_init__(self) -> None:
        if self.top < 0 or self.maxiter < 1 or self.max_shift <= 0 or self.min_distance < 0 or self.search < 0 \
                or self.rank not in ("criterion", "rwp") or self.workers < 1:
            raise ValueError(f"refinement needs top >= 0, maxiter >= 1, max_shift > 0, min_distance >= 0, "
                             f"workers >= 1 and rank criterion or rwp, got {self.as_dict()}")

    def as_dict(self) -> dict:
        return {"top": self.top, "maxiter": self.maxiter, "max_shift": self.max_shift,
                "min_distance": self.min_distance, "restrain": self.restrain, "search": self.search,
                "search_gain": self.search_gain, "rank": self.rank, "strain": self.strain, "walk": self.walk,
                "disorder": self.disorder, "envelope": self.envelope, "above_short": self.above_short}


NO_REFINEMENT = RefineConfig(top=0, search=0, strain=False, walk=False, envelope=False, above_short=False)


@dataclass
class PDFInput:
    """One PDF: the data on its own grid, its element and its physics (Q range, fit range)."""

    r: np.ndarray
    g: np.ndarray
    element: str = "Au"
    physics: FilePhysics | None = None
    name: str = ""
    alloy: tuple[str, ...] = ()       # other metals of the file's formula (answered as ``element``)
    non_metals: tuple[str, ...] = ()  # non-metals of the formula beside them (not in parentheses)

    def __post_init__(self) -> None:
        self.r = np.asarray(self.r, float)
        self.g = np.asarray(self.g, float)
        if self.physics is None:
            self.physics = file_physics({}, self.r, g=self.g)

    @classmethod
    def on_model_grid(cls, g: np.ndarray, element: str = "Au", params=DEEPSTRUC_PARAMS, name: str = ""):
        """A PDF simulated on the training grid (0-29.99 A) with known physics."""
        r = rgrid(params)
        phys = file_physics({}, r, qmin=params.qmin, qmax=params.qmax)
        return cls(r, np.asarray(g, float), element, phys, name)

    def model_grid(self) -> np.ndarray:
        """G on the networks' grid r = 0.01 k, k < 3000; zero where the file has no data."""
        rm = np.arange(N_R) * R_STEP
        inside = (rm >= self.r[0] - 1e-9) & (rm <= self.r[-1] + 1e-9)
        return np.where(inside, np.interp(rm, self.r, self.g), 0.0)


@dataclass
class Candidate:
    xyz: np.ndarray
    source: str                      # "model" or "library"
    label: str                       # library entry name, or "sample k"
    motif: str | None = None         # library entries know theirs
    rwp: float = 1.0                 # final, with the file's physics
    rwp_rigid: float = 1.0           # after the physics fit, before coordinate refinement
    fit: PhysicsFit | None = None
    refined: bool = False
    shift_rms: float = 0.0
    g_calc: np.ndarray | None = None  # on the fit grid, scaled to the data
    recovery_loss: float = 0.0
    search_rwp: float | None = None  # library: the search's Rwp
    exact: bool = False              # rwp and rwp_rigid from the exact calculator (else the fit's model)
    start_xyz: np.ndarray | None = None   # before coordinate refinement
    start_fit: PhysicsFit | None = None
    start_clashed: bool = False           # refined to separate atoms on top of each other
    disordered: bool = False              # refined with part of Biso left to free coordinates
    rwp_refined_unjustified: float | None = None   # a refinement undone by the criterion: its Rwp
    near: "Candidate | None" = None  # a search's answer: the structure one move short of it
    unstrained: "Candidate | None" = None  # a strained candidate (``_strain``): itself before the strain
    set_aside: str | None = None     # listed for the verdict, never ranked: why (``_unbracketed``)
    via: str | None = None           # a library entry the search did not propose: what fitted it
    envelope: float | None = None    # a lattice sphere fitted by its diameter (A; ``_envelope``): its
                                     # Rwp and curve are the envelope model's
    recut: bool = False              # a search that made it both removed and added (atoms in the
                                     # count search, or layers in the layer search): ``verdict.judge``

    @property
    def n_atoms(self) -> int:
        return len(self.xyz)

    @property
    def unrefined_xyz(self) -> np.ndarray:
        """The coordinates before any coordinate refinement (the ones refined from)."""
        return self.start_xyz if self.refined and self.start_xyz is not None else self.xyz

    @property
    def min_pair(self) -> float:
        return min_pair_distance(self.xyz)

    @property
    def detached(self) -> int:
        return detached_atoms(self.xyz)

    def physical(self, d: float, fraction: float) -> bool:
        return self.n_atoms >= 2 and self.min_pair >= 0.99 * fraction * d


@dataclass
class Prediction:
    candidates: list[Candidate]             # best first (any ``set_aside`` last)
    r: np.ndarray                            # fit grid
    g_obs: np.ndarray                        # the data on it
    physics: FilePhysics
    d_nn: float
    extent: dict
    verdict: Verdict
    input_check: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    q_grid_biso: float = 0.3                 # the Biso whose DiffPy Q grid the fit cut F(Q) on
    noise_rwp: float = 0.0                   # the Rwp the data's noise alone leaves (verdict.noise_rwp)
    short_peak: dict | None = None           # a peak below the metal's shortest distance the answer leaves (verdict.short_peak)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def min_pair_distance(xyz: np.ndarray) -> float:
    """The shortest interatomic distance (inf for fewer than two atoms)."""
    if len(xyz) < 2:
        return float("inf")
    return float(nn_distances(xyz).min())


def detached_atoms(xyz: np.ndarray, factor: float = 1.25) -> int:
    """Atoms with no neighbour within ``factor`` x the structure's median nearest-neighbour
    distance: the PDF cannot see an atom placed far from the particle, so Rwp won't flag it."""
    if len(xyz) < 2:
        return 0
    nn = nn_distances(xyz)
    return int(np.sum(nn > factor * np.median(nn)))


def predict(nets: Networks | None, pdf: PDFInput, sampler: SamplerConfig, candidates: int = 4,
            seed: int = 0, schedule: Schedule | None = None, refine: RefineConfig = RefineConfig(),
            source: str = "both", library=None, library_top: int = LIBRARY_TOP,
            t: float = KERNEL_WIDTH) -> Prediction:
    return predict_batch(nets, [pdf], sampler, candidates, seed, schedule, refine, source, library,
                         library_top, t)[0]


def predict_batch(nets: Networks | None, pdfs: list[PDFInput], sampler: SamplerConfig,
                  candidates: int = 4, seed: int = 0, schedule: Schedule | None = None,
                  refine: RefineConfig = RefineConfig(), source: str = "both", library=None,
                  library_top: int = LIBRARY_TOP, t: float = KERNEL_WIDTH,
                  _refit_of: dict | None = None, _q_checked: bool = False) -> list[Prediction]:
    """Several PDFs at once: the networks see len(pdfs) x candidates rows per call.
    ``_refit_of``: the peak of another element a first fit of these data left, fitted again
    from above it (``_above_short``): judged with it, not with a peak of its own.
    ``_q_checked``: the Q range was checked with a first pass's answer (``_q_again``), which
    this pass answers again: it is not checked a second time (two values could take turns).

    Raises InputRefused (naming the position in ``pdfs``) for a PDF that is not usable."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    use_model = source in ("both", "model") and nets is not None and candidates > 0
    use_library = source in ("both", "library") and library is not None
    if not (use_model or use_library):
        raise ValueError(f"source {source!r} needs " + ("networks" if source == "model" else "a library"))
    t_all = time.perf_counter()
    gm = np.stack([p.model_grid() for p in pdfs])
    d_nn = nn_distance(gm, strict=False)
    checks = []
    for i, p in enumerate(pdfs):
        try:
            checks.append(check_input(p.r, p.g, None if not np.isfinite(d_nn[i]) else float(d_nn[i]),
                                      p.physics.qmax))
        except InputRefused as exc:
            raise InputRefused(f"{p.name or f'PDF {i}'}: {exc}") from None
    timings = {"check_s": time.perf_counter() - t_all}

    decoded: list[list[Candidate]] = [[] for _ in pdfs]
    if use_model:
        decoded = _model_candidates(nets, gm, d_nn, sampler, candidates, seed, schedule, t, timings)

    out = []
    for i, p in enumerate(pdfs):
        t0 = time.perf_counter()
        d = float(d_nn[i])
        grid = fit_grid(p.physics)
        g_fit = np.interp(grid.r_fit, p.r, p.g)
        # what the noise alone leaves: searches and refinement chase the misfit beyond it
        noise = noise_rwp(p.r, p.g, grid.r_fit, g_fit, p.physics.qmax)
        extent = particle_extent(p.r, p.g, d, checks[i]["noise_level"])
        reach_A = EXTENT_REACH[0] * extent["extent_A"] + EXTENT_REACH[1]
        cands = list(decoded[i])
        tm = {k: v / len(pdfs) for k, v in timings.items()}
        if use_library:
            ts = time.perf_counter()
            # clusters whose own PDF reaches far beyond the particle's cannot match it
            known = {} if p.physics.qdamp is None else {"qdamp": (p.physics.qdamp,)}
            hits = library.search(p.r, p.g, d, p.physics.qmin, p.physics.qmax, p.physics.rmin,
                                  p.physics.rmax, top=library_top, per_motif=LIBRARY_PER_MOTIF,
                                  max_extent=reach_A, **known)
            for h in hits:
                cands.append(Candidate(library.xyz(h.index) * h.bond, "library", h.name, h.motif,
                                       search_rwp=h.rwp))
            tm["library_search_s"] = time.perf_counter() - ts
        tf = time.perf_counter()
        for c in cands:
            # library matches come with their bond length: a narrow size scan suffices
            sizes = np.linspace(0.995, 1.005, 5) if c.source == "library" else np.linspace(0.97, 1.03, 7)
            c.fit = grid.fit(c.xyz, g_fit, sizes=sizes)
            c.xyz = (c.xyz - c.xyz.mean(0)) * c.fit.size
            c.rwp = c.rwp_rigid = c.fit.rwp
            c.g_calc = c.fit.g_calc
        frac = refine.min_distance

        def tier(c: Candidate) -> tuple[bool, bool]:
            # physical ones first (atoms on top of each other must not win on Rwp), then those
            # whose fit keeps Qdamp inside its range
            return not c.physical(d, frac), overdamped(c)

        if cands and p.physics.origin.get("qmin") == "default":
            grid = _fit_qmin(cands, grid, g_fit, tier)
            p = replace(p, physics=grid.phys)
        grid = _regrid(cands, grid, g_fit, tier)
        tm["fit_s"] = time.perf_counter() - tf

        cands.sort(key=lambda c: (*tier(c), c.rwp))
        floor = NOISE_FLOOR * noise / (1.0 - refine.search_gain)

        def settled(c: Candidate, threshold: float = REFINE_NOT_NEEDED) -> bool:
            # a fit whose misfit beyond the noise is already below REFINE_NOT_NEEDED, or too close
            # to the noise for a search's gain to be told apart, has nothing for searches or
            # refinement (on noise they fit noise); the walk has its own, lower threshold
            return misfit(c.rwp_rigid, noise) < max(threshold, floor)

        n_ind = independent_points(p.physics)
        if refine.strain and cands and not settled(cands[0]):
            tst = time.perf_counter()
            # Library entries only: a strain adapts an ideal lattice shape to a strained lattice;
            # a network's sample is no ideal lattice (its atoms are 0.03-0.3 A off, which is the
            # refinement's to correct), and straining it only moved which sample the searches
            # started from (an octahedron's networks-alone answer 135 -> 88 atoms for 146).
            # As for refinement, a candidate far behind the best fit is not worth the time.
            reach = cands[0].rwp_rigid + max(REFINE_REACH, cands[0].rwp_rigid)
            todo = [k for k, c in enumerate(cands) if c.source == "library"
                    and 4 <= c.n_atoms <= REFINE_MAX_ATOMS and c.rwp_rigid <= reach][:STRAIN_TOP]
            for k in todo:
                cands[k] = _strain(cands[k], grid, g_fit, n_ind, refine.search_gain, noise)
            # a strain takes from Biso the misfit Biso had been hiding, and the Q grid follows the
            # Biso found now (an hcp prism strained 2.5 % along c, made at Biso 0.3: 0.58 rigid,
            # 0.30 strained; Rwp 0.0035 on the rigid fit's grid, 0.00015 on its own). Where the
            # data's noise leaves Biso loosely fixed the rigid fit's grid can be the better one
            # (a noisy 30-atom hcp prism: 0.072 -> 0.081): the grid that fits better is kept.
            if any(c.unstrained is not None for c in cands):
                grid = _regrid(cands, grid, g_fit, tier, if_better=True)
            cands.sort(key=lambda c: (*tier(c), c.rwp))
            tm["strain_s"] = time.perf_counter() - tst
        walked, walk_start, unbracketed = [], None, None
        if refine.walk and use_library and cands and not settled(cands[0], WALK_NOT_NEEDED):
            # after the strain: a rigid fit of a strained particle is poor for every member of
            # its family (a rod 2.5 % longer along c: 0.42), no guide for the walk
            tw = time.perf_counter()
            walked, walk_start, unbracketed = _walk(cands, library, grid, g_fit, tier,
                                                    reach_A, n_ind,
                                                    refine.search_gain, noise)
            cands += walked
            # a strain fitted again where the walk stopped moves Biso as the strain stage's does
            if any(c.unstrained is not None for c in walked):
                grid = _regrid(cands, grid, g_fit, tier, if_better=True)
            cands.sort(key=lambda c: (*tier(c), c.rwp))
            tm["walk_s"] = time.perf_counter() - tw
        walked_past, capped = None, False   # the family walked past the library (``_beyond``)
        if refine.envelope and use_library and cands and not settled(cands[0]):
            te = time.perf_counter()
            # both start from the best library fit, which the sphere added does not move
            cands += _envelope(cands, grid, g_fit)
            beyond, walked_past, capped = _beyond(cands, library, grid, g_fit, tier)
            cands += beyond
            cands.sort(key=lambda c: (*tier(c), c.rwp))
            tm["envelope_s"] = time.perf_counter() - te
        if refine.search > 0 and cands and not settled(cands[0]):
            tsr = time.perf_counter()
            starts = [c for c in cands[:1] if 4 <= c.n_atoms <= REFINE_MAX_ATOMS]
            # further starts (``--search N``, not the default): the next best fits of other atom
            # counts, within the refinement's reach and of the best fit's tier
            reach = cands[0].rwp_rigid + max(REFINE_REACH, cands[0].rwp_rigid)
            for c in cands[1:]:
                if not starts or len(starts) >= refine.search:
                    break
                if 4 <= c.n_atoms <= REFINE_MAX_ATOMS and c.rwp_rigid <= reach and tier(c) == tier(cands[0]) \
                        and all(c.n_atoms != s.n_atoms for s in starts):
                    starts.append(c)
            # a strained start also searches as it was: the strain that fits a structure of the
            # wrong cut best can lead the searches away from the right cut, which the unstrained
            # structure reaches (a noisy 14-atom bipyramid: 16 atoms at Rwp 0.099 from the
            # strained start, 14 at 0.053 from the unstrained one)
            # where the walk moved the best candidate, its start searches too: the searches re-cut
            # what the family's members cannot (a 744-atom multiply twinned particle: 661 atoms,
            # Rwp 0.054, from the walk's 585-atom start; nothing better than the walk's 672 at
            # 0.071 from there)
            if any(c is cands[0] for c in walked) and 4 <= walk_start.n_atoms <= REFINE_MAX_ATOMS \
                    and not any(c is walk_start for c in starts):
                starts.append(walk_start)
            for c in starts + [c.unstrained for c in starts if c.unstrained is not None]:
                cands += _search(c, grid, g_fit, d, refine.search_gain, noise)
            cands.sort(key=lambda c: (*tier(c), c.rwp))
            tm["search_s"] = time.perf_counter() - tsr
        if refine.top > 0 and cands and not settled(cands[0]):
            tr = time.perf_counter()
            tied = []
            if use_library and refine.disorder and cands[0].n_atoms <= DISORDER_MAX_ATOMS:
                tied = _tied_members(cands[0], cands, library, grid, g_fit, reach_A)
                cands += tied
                cands.sort(key=lambda c: (*tier(c), c.rwp))
            # a candidate far behind the best rigid fit does not catch up under restraints:
            # refining it only costs time
            reach = cands[0].rwp_rigid + max(REFINE_REACH, cands[0].rwp_rigid)
            todo = [k for k, c in enumerate(cands)
                    if 2 <= c.n_atoms <= REFINE_MAX_ATOMS and c.rwp_rigid <= reach][:refine.top]
            # members only the disorder refinement tells apart (none without it)
            todo += [k for k, c in enumerate(cands) if k not in todo and any(c is t for t in tied)
                     and c.n_atoms <= DISORDER_MAX_ATOMS]
            for k, c in zip(todo, _map(lambda k: _refine(cands[k], grid, g_fit, refine, d), todo, refine.workers)):
                cands[k] = c
            if refine.rank == "criterion":
                cands = [justified(c, n_ind) for c in cands]
                cands.sort(key=lambda c: (*tier(c), criterion(c, n_ind)))
            else:
                cands.sort(key=lambda c: (*tier(c), c.rwp))
            tm["refine_s"] = time.perf_counter() - tr
        if not cands:
            raise InputRefused(f"{p.name or f'PDF {i}'}: no candidate structure (the networks decoded "
                               "no atoms and no library was given)")
        rigid0 = cands[0].rwp_rigid     # the fit's own calculator, as every other candidate's
        cands[0] = _report_exact(cands[0], p.physics, grid, g_fit, p.element)
        bounded = False
        at_level = cands[0].rwp < EXACT_FIT and not cands[0].refined  # EXACT_FIT: rigid fits only
        if use_library and extent.get("signal_to_end_of_data") \
                and (at_level or _tail_is_noise(cands[0], grid.r_fit, g_fit, p.physics.qmax)):
            # signal to the end of the data: the next larger members of the answer's family say
            # whether the data bound the size
            larger, fitted = _larger_members(cands[0], cands, library, grid, g_fit)
            if larger and at_level:
                bounded = min(c.rwp for c in larger) >= EXACT_FIT
            elif larger:
                # in noise, or ripples the Q range leaves beyond a small particle (a 13-atom
                # icosahedron, Qmin 0.7: 2 % of its first peak at 20 A), where the data beyond the
                # answer hold no more than its misfit inside: the answer's rigid fit must beat
                # every larger structure fitted (its family's next members, and any other
                # candidate) by the searches' acceptance gain (``search_gain``, 20 %), and they
                # must leave a misfit the noise does not explain
                big = min([c.rwp_rigid for c in larger] + [
                    c.rwp_rigid for c in cands if c.n_atoms > cands[0].n_atoms and c.envelope is None
                    and c.set_aside is None and c.physical(d, frac)])
                bounded = rigid0 < gain_bound(big, refine.search_gain, noise) and (
                    noise < NOISE_VISIBLE or beyond_noise(big, noise) > NOISE_LEFT * noise)
            cands += fitted     # listed last: fitted only to bound the size, not ranked
        largest = None
        built = [c for c in cands if c.via == BUILT]
        if use_library:
            # what the largest entry's own PDF shows, as the data's extent is measured
            largest = float(np.max(library.extent)) * d
            if cands[0].envelope is not None:   # spheres of its lattice were tried up to D_MAX
                from cbldm.runtime.envelope import D_MAX

                largest = max(largest, D_MAX)
            if built:    # and the family's members built past the library (the widest: a
                from cbldm.runtime.library import visible_extent     # decahedron's count says less)
                from cbldm.runtime.structure import diameter

                top = max(built, key=lambda c: diameter(c.xyz))
                largest = max(largest, visible_extent(top.xyz / nn_length(top.xyz)) * d)
        # a large answer among the largest clusters of its motif tried: the library's, where its
        # family was not walked past the library's end (``_beyond``: icosahedra and decahedra), or
        # the walk's, where it stopped at MTP_MAX_ATOMS: the particle may be larger
        ceiling = None
        b0 = cands[0]
        if use_library and b0.source == "library" and b0.envelope is None and b0.motif and b0.rwp >= EXACT_FIT:
            from cbldm.runtime.library import family_of

            if walked_past is not None and family_of(b0.label)[0] == walked_past:
                if capped:   # the walk stopped where members grew too large to build
                    ceiling = (str(b0.motif), MTP_MAX_ATOMS)
            elif library.index(b0.label) is not None:
                top = int(library.n_atoms[library.motif == b0.motif].max(initial=0))
                if b0.n_atoms >= max(ENVELOPE_FROM_ATOMS, CEILING_FRACTION * top):
                    ceiling = (str(b0.motif), top)

        def exact(x: Candidate) -> Candidate:   # in the list too: the JSON reports what the verdict says
            if x.exact:     # already (the runner-up named again as the rigid rival)
                return x
            k = next(j for j, c in enumerate(cands) if c is x)
            cands[k] = _report_exact(x, p.physics, grid, g_fit, p.element)
            return cands[k]

        # the runner-up with another count, physical, its Rwp from the same calculator; a
        # candidate ranked down for needing Qdamp at its bound is said separately (``damped``)
        demote = not overdamped(cands[0])
        others = [c for c in cands[1:] if c.n_atoms != cands[0].n_atoms and c.physical(d, frac)
                  and c.via != "size bound"]    # fitted only to bound the size: never ranked
        runner = next((c for c in others if not (demote and overdamped(c))), None)
        near = cands[0].near
        if near is not None and near.n_atoms != cands[0].n_atoms and near.physical(d, frac) \
                and not (demote and overdamped(near)) and (runner is None or near.rwp < runner.rwp):
            cands.insert(1, near)      # listed, so the JSON holds what the verdict names
            runner = near
        # the best-fitting candidate ranked down for needing Qdamp at its bound
        damped = min((c for c in others if demote and overdamped(c)), key=lambda c: c.rwp, default=None)
        if runner is not None:
            runner = exact(runner)
        # a refined answer whose rigid fit another count beats: ranked first by its refinement
        # alone (a thermally displaced 51-atom decahedron answered as the 62-atom one: rigid
        # 0.052 against the truth's 0.045, refined 0.015 against 0.031)
        rigid_rival = None
        if cands[0].refined:
            # from the list as it is now: ``exact`` has replaced the runner-up there
            rivals = [c for c in cands[1:] if c.n_atoms != cands[0].n_atoms and c.physical(d, frac)
                      and c.rwp_rigid < cands[0].rwp_rigid and c.set_aside is None and c.envelope is None
                      and c.via != "size bound" and not (demote and overdamped(c))]
            if rivals:
                rigid_rival = exact(min(rivals, key=lambda c: c.rwp_rigid))
        if damped is not None:
            damped = exact(damped)
        assumed = {k: getattr(p.physics, k) for k in ("qmax", "qmin") if p.physics.origin.get(k) == "default"}
        if unbracketed is not None:   # listed last: the JSON holds what the verdict names
            cands.append(replace(unbracketed, set_aside="a walk along the library family that the data "
                                                        "did not bracket (the size traded against Qdamp)"))
            unbracketed = exact(cands[-1])
        if _refit_of is not None:
            short = _refit_of
        else:
            short = short_peak(grid.r_fit, g_fit, cands[0].g_calc, d, checks[i]["noise_level"]) \
                if cands[0].g_calc is not None else None
        refit = _above_short(p, short, d, grid.r_fit, g_fit - cands[0].g_calc) \
            if refine.above_short and _refit_of is None and short and short["unexplained"] else None
        verdict = judge(cands[0], runner, d, extent, largest, assumed, damped, noise, unbracketed, bounded,
                        (p.element, p.alloy, p.non_metals), ceiling, short, rigid_rival)
        tm["total_s"] = tm.get("check_s", 0) + (time.perf_counter() - t0) + sum(
            v for k, v in tm.items() if k in ("encode_s", "sample_s", "decode_s", "recover_s"))
        pred = Prediction(cands, grid.r_fit, g_fit, p.physics, d, extent, verdict, checks[i], tm,
                          sampler.as_dict() | {"candidates": candidates, "seed": seed,
                                               "source": source, "library_top": library_top,
                                               "library_per_motif": LIBRARY_PER_MOTIF,
                                               "refine": refine.as_dict()}, grid.qgrid_biso, noise,
                          short)
        requal = None if _q_checked else _q_again(p, cands[0], grid, g_fit)
        if requal is not None:
            # the whole answer again with the Q range its answer takes: the first candidates chose it
            try:
                again = predict_batch(nets, [requal], sampler, candidates, seed, schedule, refine, source, library,
                                      library_top, t, _refit_of=_refit_of, _q_checked=True)[0]
            except InputRefused:     # the first answer stands
                again = None
            if again is not None:
                again.timings = {"first_fit_s": tm["total_s"]} | again.timings
                again.timings["total_s"] += tm["total_s"]
                out.append(again)
                continue
        if refit is not None:
            # the whole answer again, on the data above the other element's bonds: a metal structure
            # fitted across them bends to hold them (measured Au144(p-MBA) from 1.5 A: 55 atoms whose
            # refined coordinates, 0.23 A RMS of static disorder, put Au-Au pairs near its Au-S peak)
            peak = short | {"refit_from_A": round(refit.physics.rmin, 3),
                            "first_fit": {"rmin_A": p.physics.rmin, "n_atoms": cands[0].n_atoms,
                                          "rwp": round(cands[0].rwp, 5), "label": str(cands[0].label)}}
            try:
                again = predict_batch(nets, [refit], sampler, candidates, seed, schedule,
                                      replace(refine, above_short=False), source, library, library_top, t,
                                      _refit_of=peak, _q_checked=_q_checked)[0]
            except InputRefused:     # the first answer stands, its verdict naming the peak
                again = None
            if again is not None:
                again.sampler = again.sampler | {"refine": refine.as_dict()}
                again.timings = {"first_fit_s": tm["total_s"]} | again.timings
                again.timings["total_s"] += tm["total_s"]
                pred = again
        out.append(pred)
    return out


def _above_short(p: PDFInput, short: dict | None, d: float, r: np.ndarray, res: np.ndarray) -> PDFInput | None:
    """``p`` with its fit range starting above a peak of another element that the answer leaves
    (``verdict.short_peak``, where it counts), as a PDFgui user leaves a ligand shell's bonds out
    of a metal fit: where the first fit's residual ``res`` (on ``r``) falls back to zero above the
    peak, but no closer to the first peak than REFIT_SIGMAS of its widths (where metal-metal
    pairs begin). None where nothing is to be excluded, too little would be left (3 A), or the
    user set the fit's start (``--rmin``: theirs stands; the verdict still names the peak)."""
    if not short or not short.get("unexplained") or p.physics.source.get("rmin") == "option":
        return None
    sigma = first_peak_sigma(p.r, p.g, d)
    if sigma is None:
        return None
    above = np.flatnonzero((r > short["r_A"]) & (res <= 0))
    zero = float(r[above[0]]) if len(above) else d
    rmin = max(short["r_A"] + 0.1, min(zero, d - REFIT_SIGMAS * sigma))
    if rmin <= p.physics.rmin or p.physics.rmax - rmin < 3.0:
        return None
    src = dict(p.physics.source) | {"rmin": f"above a peak no metal pair explains, at {short['r_A']:.2f} A "
                                            f"(first fitted from {p.physics.rmin:g} A)"}
    return replace(p, physics=replace(p.physics, rmin=round(rmin, 2), source=src))


def _large_start(cands: list[Candidate]) -> Candidate | None:
    """The best library fit (not a lattice sphere), where it holds ENVELOPE_FROM_ATOMS or more:
    where ``_envelope`` and ``_beyond`` start."""
    best = next((c for c in cands if c.source == "library" and c.envelope is None and c.fit is not None), None)
    return best if best is not None and best.n_atoms >= ENVELOPE_FROM_ATOMS else None


def _envelope(cands: list[Candidate], grid: FitGrid, g_fit: np.ndarray) -> list[Candidate]:
    """A lattice sphere whose diameter is fitted (``cbldm.runtime.envelope``) beside the best library
    fit, when that fit is a cluster of ENVELOPE_FROM_ATOMS or more: the particle may be larger than
    anything the library holds, and a large particle's PDF fixes its lattice, bond length and
    diameter, not its facets. The lattice is the best fit's (fcc for twinned, decahedral and
    icosahedral clusters: at these sizes their PDF is an fcc lattice's with defects), the scan from
    ENVELOPE_FROM_DIAMETER of the diameter of a sphere of its atom count (a rod's length would
    start it above the particle's size)."""
    from cbldm.runtime.envelope import fit_envelope, sphere_diameter

    best = _large_start(cands)
    if best is None:
        return []
    lattice = {"hcp": "hcp", "bcc": "bcc", "sc": "sc"}.get(best.motif or "", "fcc")
    f, bond = best.fit, nn_length(best.xyz)
    d_min = ENVELOPE_FROM_DIAMETER * sphere_diameter(lattice, bond, best.n_atoms)
    e = fit_envelope(grid, g_fit, lattice, bond, d_min, start=(f.biso, f.delta2, f.qdamp))
    ca = f"_ca{e.ca:.3f}" if e.ca is not None else ""     # hcp's fitted axial ratio c/a
    return [Candidate(e.structure(), "library", f"envelope:{lattice}_sphere_D{e.diameter:.1f}A{ca}", lattice,
                      e.fit.rwp, e.fit.rwp, e.fit, g_calc=e.fit.g_calc, envelope=e.diameter)]


def _beyond(cands: list[Candidate], library, grid: FitGrid, g_fit: np.ndarray,
            tier) -> tuple[list[Candidate], str | None, bool]:
    """Where the best fit is a large icosahedron or decahedron (ENVELOPE_FROM_ATOMS or more), its
    family walked on past the library's end (``cbldm.runtime.mtp`` builds the members): one
    step in one parameter at a time, the walk moved to the best member while it fits better,
    as ``_walk`` does inside the library, until none does. A multiply twinned particle has no
    lattice sphere to grow into (``_envelope``), and the library's largest hold ~3,000 atoms.
    Members of more than MTP_MAX_ATOMS are not built. Returns the members fitted, the family
    walked (None where none was) and whether the walk stopped only because the next member
    would have been too large to build (the particle may be larger)."""
    from cbldm.runtime import mtp
    from cbldm.runtime.library import family_of

    start = _large_start(cands)
    if start is None:
        return [], None, False
    fam, par = family_of(start.label)
    if fam not in mtp.FAMILIES:
        return [], None, False
    bond = nn_length(start.xyz)
    low = (2,) if fam == mtp.FAMILIES[0] else (1, 1, 0)     # the smallest parameters of the family
    # members already fitted (the library's, by the search and ``_walk``) are not fitted again; the
    # others are built, the library's too: the way past its end can lead through them
    cur, seen, new = (start, par), {c.label for c in cands}, []
    while True:    # each move grows or shrinks one parameter and the fit must improve: it ends
        step, capped = [], False
        for j in range(len(par)):
            for sign in (1, -1):
                q = tuple(v + sign * (k == j) for k, v in enumerate(cur[1]))
                name = mtp.name_of(fam, q)
                if any(a < b for a, b in zip(q, low)) or name in seen:
                    continue
                if mtp.atoms(fam, q) > MTP_MAX_ATOMS:
                    capped = True
                    continue
                seen.add(name)
                x = mtp.build(name) * bond
                f0 = cur[0].fit
                f = grid.fit(x, g_fit, sizes=np.linspace(0.995, 1.005, 5), start=(f0.biso, f0.delta2, f0.qdamp))
                step.append((Candidate((x - x.mean(0)) * f.size, "library", name, start.motif, f.rwp, f.rwp, f,
                                       g_calc=f.g_calc, via="walk" if library.index(name) is not None else BUILT), q))
        new += [c for c, _ in step]
        best = min(step, key=lambda t: (*tier(t[0]), t[0].rwp), default=None)
        if best is None or (*tier(best[0]), best[0].rwp) >= (*tier(cur[0]), cur[0].rwp):
            return new, fam, capped
        cur = best


def _model_candidates(nets, gm, d_nn, sampler, k, seed, schedule, t, timings) -> list[list[Candidate]]:
    rng = np.random.default_rng(seed)
    schedule = schedule or Schedule()
    t0 = time.perf_counter()
    pdf, _ = model_input(gm, d_nn)                 # networks work at first-shell distance D_REF
    pdf = np.repeat(pdf, k, axis=0)                # rows: pdf0 x K, pdf1 x K, ...
    cond = nets.condition(pdf)
    mu, logvar = nets.prior(pdf)
    timings["encode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = skip_step_sample(schedule, nets.unet, cond, mu.astype(np.float64), logvar.astype(np.float64),
                         sampler, rng)
    timings["sample_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocks = nets.decoder(z.astype(np.float32).reshape(len(pdf), *LATENT_SHAPE))
    timings["decode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = []
    for i in range(len(gm)):
        row = []
        for j in range(k):
            w = from_blocks(np.asarray(blocks[i * k + j], dtype=np.float64))
            n = count_atoms(w, t)
            if n < 2:        # decoded (almost) nothing: no candidate, said in the sample count
                continue
            rec = recover_xyz(unit_diagonal(w[:n, :n]), t=t)
            row.append(Candidate(rec.xyz * (d_nn[i] / D_REF), "model", f"sample {j + 1}",
                                 recovery_loss=rec.loss))
        out.append(row)
    timings["recover_s"] = time.perf_counter() - t0
    return out


def _regrid(cands: list[Candidate], grid: FitGrid, g_fit: np.ndarray, tier,
            if_better: bool = False) -> FitGrid:
    """Fit every candidate again on the Q grid on which DiffPy would have cut a file of the
    Biso the best candidate found (``fitting.QGRID_BISO``), where that grid cuts elsewhere; the
    grid the fits are now on. The size found so far stays in the reported size factor; a
    strained candidate keeps its strain, and its unstrained self moves to the grid with it.
    ``if_better``: only if the best candidate, at its size, ranks better on the new grid than
    on the old one (the same size: the new fit's size scan must not buy the move)."""
    best = min(cands, key=lambda c: (*tier(c), c.rwp), default=None)
    regrid = grid_for(grid, best.fit.biso) if best is not None else None
    if regrid is None:
        return grid
    if if_better:
        f = regrid.fit(best.xyz, g_fit, sizes=np.ones(1), start=(best.fit.biso, best.fit.delta2, best.fit.qdamp))
        if (*tier(replace(best, fit=f)), f.rwp) >= (*tier(best), best.rwp):
            return grid
    _fit_again(cands, regrid, g_fit)
    return regrid


def _fit_again(cands: list[Candidate], grid: FitGrid, g_fit: np.ndarray) -> None:
    """Every candidate fitted again on ``grid``, from its physics, in a narrow size scan: the size
    found so far stays in the reported size factor; a strained candidate keeps its strain, and its
    unstrained self moves to the grid with it."""
    for c in cands + [c.unstrained for c in cands if c.unstrained is not None]:
        old = c.fit
        f = grid.fit(c.xyz, g_fit, sizes=np.linspace(0.995, 1.005, 5),
                     start=(old.biso, old.delta2, old.qdamp))
        c.xyz = c.xyz * f.size
        c.fit = replace(f, size=old.size * f.size, strain=old.strain,
                        at_bounds=_size_flag_kept(f, old))
        c.rwp = c.rwp_rigid = c.fit.rwp
        c.g_calc = c.fit.g_calc


def _qmin_rwps(xyz: np.ndarray, fit: PhysicsFit, grid: FitGrid, g_fit: np.ndarray,
               pairs: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[float], float]:
    """Rwp of ``xyz`` (its physics ``fit`` as the start) with each Qmin of the Q grid from 0 to
    QMIN_SCAN (index j: the columns below j set to zero, on one grid), and the grid's Q step."""
    import copy

    base = fit_grid(replace(grid.phys, qmin=0.0), grid.qgrid_biso)
    step = base.calc.qstep
    d, wt = pairs if pairs is not None else FitGrid.pair_histogram(xyz)   # once: the same pairs at every cut
    rwps = []
    for j in range(int(QMIN_SCAN / step) + 1):
        cut = copy.copy(base)
        cut.T = base.T.copy()
        cut.T[:j] = 0.0
        rwps.append(cut.fit_pairs(d, wt, len(xyz), g_fit, sizes=np.ones(1),
                                  start=(fit.biso, fit.delta2, fit.qdamp)).rwp)
    return rwps, step


def _qmin_at(j: int, step: float) -> float:
    # within the step below the column kept first, which the calculator's cut (``pdf._min_steps``)
    # then keeps: the roundest number there, as a reduction's Qmin is set by hand
    return round_within((j - 1) * step, j * step) if j > 0 else 0.0


def _fit_qmin(cands: list[Candidate], grid: FitGrid, g_fit: np.ndarray, tier) -> FitGrid:
    """For a file that states no Qmin: the Qmin of the Q grid (0 to QMIN_SCAN) with which the best
    candidate fits best, and every candidate fitted again on the grid cut there; the grid, its
    physics saying where its Qmin came from. Unlike Qmax (``fitting.band_edge``), the data cannot
    show it: below ~2 1/A the calculator's columns are nearly dependent on the fit's r range. A
    structure can: its F(Q) is large at low Q, and a cut one step off leaves a misfit at every r
    (a DiffPy icosahedron made with Qmin 0.7: Rwp 1e-4 at its own cut, 0.025 one step either side).
    A first candidate that is not the particle can choose a step off (a decahedron with vacancies,
    fitted by the ideal one: 0.64 for 0.7): ``_q_again`` checks the choice with the answer."""
    best = min(cands, key=lambda c: (*tier(c), c.rwp))
    rwps, step = _qmin_rwps(best.xyz, best.fit, grid, g_fit)
    j = int(np.argmin(rwps))
    src = dict(grid.phys.source) | {"qmin": f"fitted (no usable qmin in the header): the best first candidate's "
                                            f"Rwp {rwps[j]:.4f} there, {rwps[0]:.4f} with no cut"}
    cut_grid = fit_grid(replace(grid.phys, qmin=_qmin_at(j, step), source=src,
                                origin=grid.phys.origin | {"qmin": "fitted"}), grid.qgrid_biso)
    # where it cuts where the first fits did (the training value's column), they stand: fitted again
    # from their own physics they would move in the last digits, and the searches after them with it
    if cut_grid.calc.nqmin != grid.calc.nqmin or cut_grid.calc.qstep != grid.calc.qstep:
        _fit_again(cands, cut_grid, g_fit)
    return cut_grid


def _q_again(p: PDFInput, best: Candidate, grid: FitGrid, g_fit: np.ndarray) -> PDFInput | None:
    """``p`` with the Q range its answer ``best`` fits best, where the file did not state it: a
    Qmin ``_fit_qmin`` chose with the first candidates, each Qmin of the grid tried again; a Qmax
    read off the band edge (``fitting.band_edge``: a column of the data's grid can fall either side
    when the data were made on another Biso's grid, or damped weak near Qmax), two columns either
    side tried. None where the answer takes the same; else the answer is fitted again from the
    start with it (``predict_batch``), once: the sources then say 'checked with the answer'."""
    src = p.physics.source
    fit_min = p.physics.origin.get("qmin") == "fitted"
    read_max = p.physics.origin.get("qmax") == "band_edge"
    if not (fit_min or read_max) or best.fit is None or best.envelope is not None \
            or not 2 <= len(best.xyz) <= Q_AGAIN_MAX_ATOMS:
        return None
    pairs = FitGrid.pair_histogram(best.xyz)
    start = (best.fit.biso, best.fit.delta2, best.fit.qdamp)
    phys, said, moved = p.physics, dict(src), False
    if fit_min:
        rwps, step = _qmin_rwps(best.xyz, best.fit, grid, g_fit, pairs)
        j, now = int(np.argmin(rwps)), int(math.ceil(p.physics.qmin / step - 1e-9))
        if j != now and 0 <= now < len(rwps):
            phys, moved = replace(phys, qmin=_qmin_at(j, step)), True
            said["qmin"] = (f"fitted again with a first pass's answer ({best.n_atoms} atoms): Rwp {rwps[j]:.4f} at "
                            f"Qmin {phys.qmin:g}, {rwps[now]:.4f} at the first candidates' {p.physics.qmin:g}")
    if read_max:
        step, now = grid.calc.qstep, grid.calc.nq
        tried, grids = {}, {}
        for nq in range(now - 2, now + 3):
            v = round_within((nq - 1) * step, nq * step)
            if MIN_QMAX <= v <= MAX_QMAX and v > phys.qmin:
                # built here, not through fit_grid's cache: five trial grids would push out the
                # ones a watch service reuses file after file
                grids[v] = FitGrid(replace(phys, qmax=v), grid.qgrid_biso)
                tried[v] = grids[v].fit_pairs(*pairs, len(best.xyz), g_fit, sizes=np.ones(1), start=start).rwp
        v = min(tried, key=tried.get, default=phys.qmax)
        if v in grids and grids[v].calc.nq != now:
            phys, moved = replace(phys, qmax=v), True
            said["qmax"] = (f"the data's band edge at {p.physics.qmax:g}, fitted again with a first pass's answer "
                            f"({best.n_atoms} atoms): Rwp {tried[v]:.4f} at Qmax {v:g}")
    if not moved:
        return None
    for key, checked in (("qmin", fit_min), ("qmax", read_max)):
        if checked and said[key] == src[key]:
            said[key] = f"{src[key]}; checked with a first pass's answer"
    return replace(p, physics=replace(phys, source=said))


def _walk(cands: list[Candidate], library, grid: FitGrid, g_fit: np.ndarray, tier, max_extent: float,
          n_ind: float, gain: float, noise: float = 0.0,
          steps: int = WALK_STEPS) -> tuple[list[Candidate], Candidate | None, Candidate | None]:
    """The best library candidate's family, walked with the physics fit: its neighbours
    (``Library.neighbours``: one layer, shell or size step in one parameter) fitted, the walk
    moved to the best of them while that ranks better, at most ``steps`` moves; the candidates
    it fitted, and where it started. The search ranks proposals on coarse Biso and Qdamp
    grids, which tell families apart but not a family's members: their PDFs differ by less
    than those grids' own misfit (an hcp prism 7 layers long with displaced atoms: proposed at
    10-12 layers, Rwp 0.041; 7 layers fit 0.039). A strained start's strain goes to every
    member (one homogeneous map: the family's members share their axes); only the member the
    walk ends at is returned then, with the strain that passes the strain fit's gate there
    (carried or fitted again), else rigid.

    Third: the member a walk reached but did not keep (``_unbracketed``), else None; after a
    strained start it carries the strain carried to it, not judged there (it is only named)."""
    start = min((c for c in cands if c.source == "library" and library.index(c.label) is not None),
                key=lambda c: (*tier(c), c.rwp), default=None)
    if start is None:
        return [], None, None
    base = start.unstrained if start.unstrained is not None else start
    deform = None if start.unstrained is None else _deform(base, start)
    bond = nn_length(base.xyz)   # library entries have unit median bond
    # an entry fitted rigid only may fit better with the strain carried to it: tried again
    seen = {c.label for c in cands if c.source == "library" and (deform is None or c.unstrained is not None)}
    cur, ref, new, end, ends = start, start, [], None, []
    for _ in range(1 + (WALK_STRAIN_ROUNDS if deform is not None else 0)):
        leg = cur
        for _ in range(steps):
            step = []
            for j in library.neighbours(library.index(cur.label)):
                name = str(library.names[j])
                if name in seen or library.extent[j] * bond > max_extent:
                    continue
                seen.add(name)
                step.append(_member(library, j, bond, deform, grid, g_fit, cur.fit, ref.fit, "walk"))
            new += step
            best = min(step, key=lambda c: (*tier(c), c.rwp), default=None)
            if best is None or (*tier(best), best.rwp) >= (*tier(cur), cur.rwp):
                break
            cur = best
        if deform is None or cur is leg:
            break
        # a carried strain was never judged on the member it was carried to: the members walked
        # through are dropped, and the one the walk ends at is kept as its own strain fit or
        # the carried strain leaves it, whichever fits better of those that pass the strain's
        # gate there, else rigid
        rigid = _member(library, library.index(cur.label), bond, None, grid, g_fit, base.fit, base.fit, "walk")
        kept = [replace(cur, unstrained=rigid)] if _strain_pays(cur.rwp, rigid.rwp, n_ind, gain, noise) else []
        fresh = None
        if rigid.n_atoms <= REFINE_MAX_ATOMS:   # as for the strain stage's own starts
            fresh = _strain(rigid, grid, g_fit, n_ind, gain, noise)
            if fresh is not rigid:
                kept.append(fresh)
        end = min(kept, key=lambda c: c.rwp, default=rigid)
        ends.append(end)
        if end is not fresh or end is rigid:    # the walk goes on only with a strain fitted here
            break
        # the strain fitted where the walk stopped differs from the one carried there (the start's
        # strain also absorbed the start's wrong length: an 8-layer prism strained 2.5 % along c,
        # proposed at 10 layers, stopped at 9, 0.0034; 8 layers with 9's own strain, 0.0001);
        # the walk goes on with it
        cur = ref = end
        base = rigid       # its size includes what this leg's fits found
        deform, bond = _deform(rigid, end), nn_length(rigid.xyz)
        seen = {end.label}
    if _unbracketed(start, cur, library, grid, bond, max_extent):
        return [], start, cur
    if deform is not None and end is None:
        return [], start, None
    if deform is not None:
        # a later leg can end worse than an earlier one (no strain pays there): the best end
        new = [min(ends, key=lambda c: c.rwp)]
    return new, start, None


def _tied_members(best: Candidate, cands: list[Candidate], library, grid: FitGrid, g_fit: np.ndarray,
                  max_extent: float, steps: int = TIE_STEPS) -> list[Candidate]:
    """The members of ``best``'s library family along each of its parameters, both ways, whose
    fit (``best``'s strain carried to them) stays within ``TIE_MARGIN`` of ``best``'s Rwp: members
    the rigid fits cannot tell apart, which only coordinate refinement can (``_refine``). A
    strained, thermally displaced 9-layer hcp prism (r to 30 A) fits 0.036 at its own length,
    0.033 at 13 layers under more Qdamp: the walk climbs to 13; refined with the displacements in
    the coordinates, 9 layers fit 0.002-0.004 and 13 layers 0.009. Those fitted here, not the
    members already among ``cands`` (which the line passes through)."""
    i = library.index(best.label) if best.source == "library" else None
    if i is None:
        return []
    base = best.unstrained if best.unstrained is not None else best
    deform = None if best.unstrained is None else _deform(base, best)
    bond = nn_length(base.xyz)
    bound = best.rwp * (1.0 + TIE_MARGIN)
    had = {c.label: c for c in cands if c.source == "library" and (deform is None) == (c.unstrained is None)}
    from cbldm.runtime.library import family_of

    out = []
    for p in range(len(family_of(best.label)[1])):
        for sign in (-1, 1):
            cur, fitted = i, 0
            while fitted < steps:
                nxt = library.further(cur, p, sign)
                if not nxt:
                    break
                cur = nxt[0]
                name = str(library.names[cur])
                if library.extent[cur] * bond > max_extent:
                    break
                m = had.get(name)
                if m is None:
                    m = had[name] = _member(library, cur, bond, deform, grid, g_fit, best.fit, best.fit, "tie")
                    fitted += 1
                    if m.rwp <= bound:
                        out.append(m)
                if m.rwp > bound:
                    break
    return out


def _deform(rigid: Candidate, strained: Candidate) -> np.ndarray:
    """The linear map from ``rigid``'s coordinates to ``strained``'s (both centred)."""
    return np.linalg.lstsq(rigid.xyz - rigid.xyz.mean(0), strained.xyz - strained.xyz.mean(0), rcond=None)[0]


def _member(library, j: int, bond: float, deform: np.ndarray | None, grid: FitGrid, g_fit: np.ndarray,
            start_from: PhysicsFit, reported_from: PhysicsFit, via: str) -> Candidate:
    """Library entry ``j`` at bond length ``bond`` (and the linear map ``deform``, a carried
    strain), physics fitted from ``start_from``'s values; its size and strain reported as
    ``reported_from``'s, times what this fit adds; ``via``: what asked for it."""
    x = library.xyz(j) * bond
    x = x - x.mean(0) if deform is None else (x - x.mean(0)) @ deform
    f = grid.fit(x, g_fit, sizes=np.linspace(0.995, 1.005, 5),
                 start=(start_from.biso, start_from.delta2, start_from.qdamp))
    fit = replace(f, size=reported_from.size * f.size, strain=reported_from.strain,
                  at_bounds=_size_flag_kept(f, reported_from))
    return Candidate(x * f.size, "library", str(library.names[j]), str(library.motif[j]), rwp=f.rwp,
                     rwp_rigid=f.rwp, fit=fit, g_calc=f.g_calc, via=via)


def _tail_is_noise(best: Candidate, r: np.ndarray, g_obs: np.ndarray, qmax: float) -> bool:
    """Whether the fit's residual is the same noise inside ``best``'s longest pair and beyond it:
    the two RMS agree within three standard errors of an RMS over that many independent points
    (r span x Qmax / pi each side). For a right answer in noise a reduction program leaves below
    Qmax (which ``verdict.noise_level`` cannot see) they match (0.85-1.07 in a trial of 20 such
    PDFs); a particle larger than the answer leaves its longer pairs beyond it, and a misfit
    inside (the wrong structure) is no noise either (a 55-atom icosahedron fitted to a 147-atom
    one in 1.5 % noise: 0.60 inside, 0.20 beyond). False where the data end within 2 A of the
    answer's size or hold too few points beyond it: the data cannot bound it there, and the
    check that the larger members make is not run."""
    if best.g_calc is None or len(best.xyz) < 2:
        return False
    span = diameter(best.xyz)
    e = g_obs - best.g_calc
    inside = (r >= r[0]) & (r <= span)
    out = r > span + 2.0
    n_in, n_out = ((r[m][-1] - r[m][0]) * qmax / np.pi if m.sum() > 1 else 0.0 for m in (inside, out))
    if n_out < 10 or n_in < 10:
        return False
    rms_in, rms_out = (float(np.sqrt(np.mean(e[m] ** 2))) for m in (inside, out))
    tol = 3.0 * np.sqrt(1.0 / (2 * n_in) + 1.0 / (2 * n_out))
    return abs(np.log(rms_out / rms_in)) <= tol if rms_in > 0 and rms_out > 0 else False


def _larger_members(best: Candidate, cands: list[Candidate], library, grid: FitGrid,
                    g_fit: np.ndarray) -> tuple[list[Candidate], list[Candidate]]:
    """The library family's members one step larger than ``best`` (a library entry fitted rigid,
    unstrained): all of them, and those of them fitted here (not among ``cands`` yet). Where
    each leaves more than ``verdict.EXACT_FIT`` and ``best`` fits below it, noise-free data bound
    the particle's size although its signal lasts to the end of the data (an unseen 240-atom
    hcp prism 57 A long, r to 30 A: 2e-4; the next shorter 0.007); above it, where the data
    beyond ``best`` hold only noise (``_tail_is_noise``) and ``best``'s rigid fit beats theirs by
    the searches' acceptance gain (``RefineConfig.search_gain``). None where ``best`` is no plain
    library entry or its family has no larger member."""
    i = library.index(best.label) if best.source == "library" and best.unstrained is None else None
    if i is None:
        return [], []
    had = {c.label: c for c in cands if c.source == "library" and c.unstrained is None}
    bond = nn_length(best.xyz)   # as fitted: each member's own size fit is a fine one around it
    grown = [j for j in library.neighbours(i) if library.n_atoms[j] > best.n_atoms]
    new = [_member(library, j, bond, None, grid, g_fit, best.fit, best.fit, "size bound")
           for j in grown if str(library.names[j]) not in had]
    return [had[str(library.names[j])] for j in grown if str(library.names[j]) in had] + new, new


def _unbracketed(start: Candidate, end: Candidate, library, grid: FitGrid, bond: float,
                 max_extent: float) -> bool:
    """The walk grew the particle (more atoms at its end than at its start, with a larger fitted
    Qdamp, Qdamp free) and, in a parameter whose step it took grows the particle, the library
    holds no next member within the data's reach (``max_extent``): the walk could not go on,
    not the data stopped it, and Qdamp and the size trade off. Measured Pt (JQ_S1, Qmax 22):
    truncated octahedra 13 to 16 layers thick fit 0.120, 0.117, 0.115, 0.114 as Qdamp rose
    0.046, 0.053, 0.058, 0.062, until the library had no 17-layer member of the truncation:
    1439 -> 2652 atoms, 40 -> 49 A across, for a signal seen to 33 A. Where the next member was
    fitted and fits worse, as on every tuning PDF, the size is bracketed, whatever Qdamp did. A
    parameter that does not grow the particle (a sphere's centre, a truncation) is no bracket:
    that the walk cannot step further in it says nothing of the size."""
    from cbldm.runtime.library import family_of

    if end is start or grid.phys.qdamp is not None or end.n_atoms <= start.n_atoms \
            or end.fit.qdamp <= start.fit.qdamp:
        return False
    (key, a), (key0, a0) = family_of(end.label), family_of(start.label)
    if key != key0 or len(a) != len(a0):
        return False
    i = library.index(end.label)
    for p in (p for p in range(len(a)) if a[p] != a0[p]):
        sign = 1 if a[p] > a0[p] else -1
        # the step grows the particle where the member one step back holds fewer atoms
        if not any(library.n_atoms[k] < end.n_atoms for k in library.further(i, p, -sign)):
            continue
        if not any(library.extent[k] * bond <= max_extent for k in library.further(i, p, sign)):
            return True
    return False


def _size_flag_kept(new: PhysicsFit, old: PhysicsFit) -> list[str]:
    """``new``'s parameters at their bounds, and the size's flag from ``old``: a fit at fixed size
    (the size is in the coordinates now) cannot see that the size it carries hit its bound."""
    return sorted(set(new.at_bounds) | ({"size"} & set(old.at_bounds)))


def _map(fn, items: list, workers: int) -> list:
    """``[fn(x) for x in items]``, on up to ``workers`` threads. Daemon threads, joined so that a
    signal still reaches the main thread: a service stopped at once (watch's second SIGINT) does
    not wait for the refinements in hand, as a ThreadPoolExecutor's threads would be waited for."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import threading

    out: list = [None] * len(items)
    failed: list[BaseException] = []
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def work():
        while not failed:
            with lock:
                k = next(todo, None)
            if k is None:
                return
            try:
                out[k] = fn(items[k])
            except BaseException as exc:    # raised again in the caller's thread
                failed.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(items)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failed:
        raise failed[0]
    return out


def _refine(c: Candidate, grid: FitGrid, g_fit: np.ndarray, cfg: RefineConfig, d: float) -> Candidate:
    """``c``'s coordinates refined against the data with its physics held (``PDFRefiner``), bonds
    restrained near their fitted length; and, with ``cfg.disorder``, for each of ``DISORDER_BISO``
    (fractions of the fitted Biso), unrestrained within ``DISORDER_SHIFT`` with Biso held at that fraction: the static
    disorder of a real particle (thermal displacements frozen in a simulation, surface
    relaxation) is fitted by Biso on an ideal lattice only on average, which leaves a misfit
    (Rwp 0.03-0.04 for a 72-atom prism displaced 0.09 A RMS, truth 0.0000) that a particle of
    another size fits as well; with the held Biso lowered the coordinates take the rest and
    the right structure fits far better than its neighbours (0.002-0.004 against 0.009). With
    Biso held at the fitted value no displacement pays: the restrained refinement moved atoms
    0.03 A and gained 10 %. The refinement that fits best is kept (``disordered`` says which);
    none above ``DISORDER_MAX_ATOMS`` atoms (~3 s each at 300, and a gain there rarely pays
    for the coordinates, ``criterion``)."""
    # a coordinate moves at most max_shift along each axis: a pair grows by at most 2 sqrt(3) of it
    longest = diameter(c.xyz) + 2 * math.sqrt(3) * max(cfg.max_shift, DISORDER_SHIFT)
    refiner = PDFRefiner.for_fit(grid, c.fit, longest)
    dmin = cfg.min_distance * d
    # the fitted structure's own bond length: its coordinates already carry the size factor
    bond = nn_length(c.xyz) if cfg.restrain else None
    ref = refiner.refine(c.xyz, g_fit, maxiter=cfg.maxiter, max_shift=cfg.max_shift,
                         min_distance=dmin, bond=bond)
    biso, chosen, best = c.fit.biso, None, None
    for frac in (DISORDER_BISO if cfg.disorder and c.n_atoms <= DISORDER_MAX_ATOMS else ()):
        dis = PDFRefiner.for_fit(grid, replace(c.fit, biso=c.fit.biso * frac), longest).refine(
            c.xyz, g_fit, maxiter=DISORDER_ITER, max_shift=DISORDER_SHIFT, min_distance=dmin)
        if dis.iterations > 0 and (best is None or dis.rwp < best.rwp):
            best, chosen = dis, frac
    disordered = best is not None and best.rwp < ref.rwp
    if disordered:
        ref, biso = best, c.fit.biso * chosen
    clash = c.min_pair < dmin
    # a candidate with atoms on top of each other takes the refined (separated) structure even
    # at some cost in Rwp; a physical one only if the fit improved
    if ref.iterations == 0 or not (clash or ref.rwp < c.rwp):
        return c
    start = c.xyz - c.xyz.mean(axis=0)
    shift = float(np.sqrt(np.mean(np.sum((ref.xyz - start) ** 2, axis=1))))
    # the refined coordinates with the physics and scale fitted again (size fixed: it is in them)
    fit = grid.fit(ref.xyz, g_fit, sizes=np.array([1.0]),
                   start=(biso, c.fit.delta2, c.fit.qdamp))
    # the size is in the coordinates now: a size at its bound stays flagged
    fit = replace(fit, size=c.fit.size, strain=c.fit.strain,
                  at_bounds=_size_flag_kept(fit, c.fit))
    if fit.rwp >= c.rwp and not clash:
        return c
    return replace(c, xyz=ref.xyz, rwp=fit.rwp, fit=fit, g_calc=fit.g_calc, refined=True, disordered=disordered,
                   shift_rms=shift, start_xyz=start, start_fit=c.fit, start_clashed=clash)


def _strain(c: Candidate, grid: FitGrid, g_fit: np.ndarray, n_ind: float, gain: float,
            noise: float = 0.0) -> Candidate:
    """``c`` homogeneously strained (``refine.fit_strain``) and its physics fitted again, where
    the strain lowers the misfit beyond the noise by ``gain`` (the searches' 20 %: a strained
    particle's fit falls 4-30 fold, from 0.42 to 0.012 for an hcp rod 2.5 % longer along c)
    and pays for its five numbers by Akaike's criterion. A particle with vacancies or another
    cut gains a few per cent from a strain that bends the wrong structure toward the data, as
    it does from any extra or missing atom; on the tuning set, gated by Akaike's criterion
    alone, such strains sent the searches elsewhere (a 114-atom rod with vacancies 0.085 ->
    0.162 A)."""
    from cbldm.runtime.refine import fit_strain

    s = fit_strain(grid, c.fit, c.xyz, g_fit)
    if not s.strain.any():
        return c
    fit = grid.fit(s.xyz, g_fit, sizes=np.array([1.0]), start=(s.biso, c.fit.delta2, s.qdamp))
    if not _strain_pays(fit.rwp, c.rwp, n_ind, gain, noise):
        return c
    # I + E = (1 + iso) (I + D): the isotropic part joins the size, D (traceless to first order)
    # is what is reported
    iso = float(np.trace(s.strain)) / 3.0
    fit = replace(fit, size=c.fit.size * (1.0 + iso), strain=(s.strain - iso * np.eye(3)) / (1.0 + iso),
                  at_bounds=_size_flag_kept(fit, c.fit))
    return replace(c, xyz=s.xyz, fit=fit, rwp=fit.rwp, rwp_rigid=fit.rwp, g_calc=fit.g_calc, unstrained=c)


def _strain_pays(rwp: float, rwp_rigid: float, n_ind: float, gain: float, noise: float) -> bool:
    from cbldm.runtime.refine import STRAIN_PARAMS

    return (_misfit(rwp, n_ind) + 2.0 * STRAIN_PARAMS < _misfit(rwp_rigid, n_ind)
            and rwp < gain_bound(rwp_rigid, gain, noise))


def _exact_rwp(c: Candidate, phys: FilePhysics, grid: FitGrid, g_fit: np.ndarray, element: str,
               xyz: np.ndarray | None = None, fit: PhysicsFit | None = None) -> float:
    """Rwp of ``xyz`` (default the candidate's) from the DiffPy-exact calculator with the fitted
    physics (the fit itself used binned distances and a series in delta2)."""
    from cbldm.runtime.pdf import rwp

    g = _exact_g(phys, grid, fit or c.fit, c.xyz if xyz is None else xyz, element)
    return c.rwp if g is None else rwp(g_fit, g)


def _exact_g(phys: FilePhysics, grid: FitGrid, f: PhysicsFit | None, x: np.ndarray, element: str):
    """DiffPy's calculation with the fitted physics, on the fit's Q grid (where it cuts at Qmin
    and Qmax: ``fitting.QGRID_BISO``) with the fitted Biso given per atom; a fitted Biso above
    the grid's widens DiffPy's r extension and so its Q grid: then that of the fitted Biso, as
    for a file DiffPy made with it."""
    from cbldm.runtime.pdf import DebyePDF, PDFParams

    if f is None or len(x) < 2:
        return None
    b = max(grid.qgrid_biso, f.biso)
    calc = DebyePDF(PDFParams(rmin=0.0, rmax=phys.rmax + phys.rstep, rstep=phys.rstep, qmin=phys.qmin,
                              qmax=phys.qmax, biso=b, delta2=f.delta2, qdamp=f.qdamp))
    uiso = np.full(len(x), f.biso / (8.0 * math.pi**2))
    return calc.calc(x, element, uiso=uiso, method="exact" if len(x) <= 400 else "histogram")[grid.mask]


def _report_exact(c: Candidate, phys: FilePhysics, grid: FitGrid, g_fit: np.ndarray, element: str) -> Candidate:
    """The candidate with its Rwp, its curve and (when refined) its Rwp before refinement from
    the exact calculator: the numbers an answer reports."""
    from cbldm.runtime.pdf import best_scale, rwp

    if c.envelope is not None:   # a sphere of smoothed shell counts: its fit is its calculation
        return c
    g = _exact_g(phys, grid, c.fit, c.xyz, element)
    if g is None:
        return c
    scale = best_scale(g_fit, g)
    r = rwp(g_fit, g)
    rigid = r
    if c.refined and c.start_xyz is not None:
        rigid = _exact_rwp(c, phys, grid, g_fit, element, c.start_xyz, c.start_fit)
    return replace(c, rwp=r, rwp_rigid=rigid, g_calc=scale * g, fit=replace(c.fit, scale=scale, rwp=r), exact=True)


def _search(c: Candidate, grid: FitGrid, g_fit: np.ndarray, d: float, gain: float,
            noise: float = 0.0) -> list[Candidate]:
    """The atom-count search from ``c`` and the facet-layer search followed by the atom-count
    search (``cbldm.runtime.search``): new candidates where the count changed and Rwp fell by
    ``gain`` of its value (a thermally disordered particle of the right count gains a few per
    cent from any extra or missing atom; a wrong count gains far more from the right one), in
    its misfit beyond the data's noise ``noise`` (``verdict.gain_bound``)."""
    from cbldm.runtime.search import grow_prune, layer_search

    def found(xyz: np.ndarray, fit: PhysicsFit, how: str, scale: float, *moves) -> Candidate:
        # the strain is in the coordinates the search moved; the size is the start's times the
        # sizes the search fitted on its way; ``moves``: the searches' results that made it
        fit = replace(fit, strain=c.fit.strain, size=c.fit.size * scale,
                      at_bounds=_size_flag_kept(fit, c.fit))
        return Candidate(xyz, c.source, f"{c.label} {len(xyz) - c.n_atoms:+d} atoms ({how})", None,
                         fit.rwp, fit.rwp, fit, g_calc=fit.g_calc, search_rwp=c.search_rwp,
                         recut=any(m.removed and m.added for m in moves))

    out = []
    bond = nn_length(c.xyz)
    bound = gain_bound(c.rwp, gain, noise)
    res = grow_prune(c.xyz, g_fit, grid, c.fit, bond, noise=noise)
    if (res.removed or res.added) and res.fit.rwp < bound:
        out.append(found(res.xyz, res.fit, f"-{res.removed}/+{res.added}", res.scale, res))
    lay = layer_search(c.xyz, g_fit, grid, c.fit, bond, noise=noise)
    if lay.removed or lay.added:
        more = grow_prune(lay.xyz, g_fit, grid, lay.fit, nn_length(lay.xyz), noise=noise)
        # the atom search after the layers must keep the count the layers changed
        best = more if (more.removed or more.added) and more.fit.rwp < lay.fit.rwp \
            and len(more.xyz) != c.n_atoms else lay
        extra = f", then -{more.removed}/+{more.added} atoms" if best is more else ""
        if len(best.xyz) != c.n_atoms and best.fit.rwp < bound:
            new = found(best.xyz, best.fit, f"layers -{lay.removed}/+{lay.added}{extra}",
                        lay.scale * more.scale if best is more else lay.scale,
                        *((lay, more) if best is more else (lay,)))
            # the search walks the count one move at a time while the fit improves: the
            # structure one move short is its closest rival of another count (each layer a
            # measured particle takes on can gain less than the count tie of the verdict)
            prev = (lay.xyz, lay.fit, lay.scale) if best is more else lay.path[-2] if len(lay.path) >= 2 else None
            if prev is not None and len(prev[0]) != new.n_atoms:
                # marked where the layer search it ends was cut both ways (a layer path's steps
                # do not record their counts: one step short of the layer search's own answer
                # is not marked)
                new.near = found(prev[0], prev[1], "one search move short of the answer", prev[2],
                                 *((lay,) if best is more else ()))
            # one candidate per count from one start: the better fit
            out = [o for o in out if o.n_atoms != new.n_atoms or o.rwp < new.rwp]
            if all(o.n_atoms != new.n_atoms for o in out):
                out.append(new)
    return out
