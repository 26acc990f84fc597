"""Atom-count search: remove surface atoms or add atoms on the surface while the PDF fit improves.

A library shape or a decoded structure is often the right motif with a few atoms too many or
too few: a truncated octahedron is an octahedron without its corners, a real particle has
vacancies and adatoms. Rwp decides, one atom at a time (greedy best improvement):
- removals: any atom with fewer neighbours than the most coordinated one (a surface atom);
- additions: lattice-continuation sites, x_i + (x_i - x_j) for bonded i, j with i on the
  surface (the next site along a bond; exact for Bravais lattices, close for twinned ones),
  and the three-fold hollows over the surface (both of a close-packed facet's: an adatom sits
  in either), at least 0.9 bond lengths from every atom and bonded to at least three.
Every possible move is scored at once with the physics of the candidate's fit held fixed:
G is linear in the pair histogram, so F after removing atom i is F_total - F_i (F_i: the
Debye sum of atom i's pairs) and after adding site s, F_total + F_s, renormalised by the new
atom count. A move is taken only if it lowers Rwp (its part beyond the data's noise,
``verdict.gain_bound``) by ``MIN_GAIN`` of its value, and the count stays within
``MAX_CHANGE`` of the start's: the search adjusts a motif, it does not invent one (left free,
it turned a 105-atom decahedron fitted to a ligand-capped Au cluster into 65 atoms
of no motif at a lower Rwp). Phases of
removals only and of additions only alternate, the first of the kind whose phase ends at
the lower misfit (both are run), the physics fitted again between them; every
structure the path passes through is then fitted with its own physics and the best wins (the
particle's size and Qdamp trade off: with the start's physics held, the path overshoots).

Layer search (``layer_search``): a particle that is not in the library is most often a
library shape cut differently: a prism some layers shorter, a plate where the library holds a
sphere, a truncated corner. One atom at a time cannot get there (removing one atom of a
facet barely changes the fit, and the count may move by 12 % only), so whole facet layers are
moved: for every facet of the convex hull, the atoms on it are removed, or the next layer on
top of it is added (lattice continuation of the facet's atoms, both the fcc and the hcp way).
The same linear scoring, physics refitted after each move, best structure on the path wins.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cbldm.runtime.verdict import gain_bound

MIN_GAIN = 0.01        # relative Rwp improvement a move must bring (beyond the noise: verdict.gain_bound)
MAX_CHANGE = 0.12      # the count may move by at most this fraction of the start's (and 3 atoms)
MAX_MOVES = 24         # per phase
LAYER_MAX_CHANGE = 0.5  # layer moves may change the count by at most this fraction of the start's
LAYER_MAX_MOVES = 8
LAYER_REFIT = 12        # distinct moves per step fitted with their own physics (ranked with held physics)
SUBSAMPLE = 3          # every 3rd point of the fit grid while scoring moves (0.03 A << pi/Qmax)


@dataclass
class SearchResult:
    xyz: np.ndarray
    rwp: float            # of the chosen structure, its physics fitted
    rwp_start: float      # of the start, with the start's physics (subsampled grid)
    removed: int
    added: int
    path: list = None     # _greedy: (structure, removed, added) after each move of one phase;
                          # layer_search: (structure, its fit, scale) after each move
    fit: object = None    # the chosen structure's physics fit (cbldm.runtime.fitting.PhysicsFit)
    scale: float = 1.0    # the sizes fitted on the way, multiplied: distances between the atoms
                          # kept are the start's scaled by it (fit.size is the last fit's alone)


class _Scorer:
    """Scores structures against the data with the physics of one fit: the refiner's kernel
    and transform (``PDFRefiner.for_fit``), on every SUBSAMPLE-th point of the fit grid."""

    def __init__(self, grid, fit, g_obs: np.ndarray):
        from cbldm.runtime.refine import PDFRefiner

        ref = PDFRefiner.for_fit(grid, fit)
        self.K = ref.K                                                               # (bins, nq)
        self.T = np.ascontiguousarray(ref.T.T[:, ::SUBSAMPLE])                       # (nq, n)
        self.g = np.asarray(g_obs, float)[::SUBSAMPLE]
        self.gg = float(self.g @ self.g)
        self.h = grid.h
        self.nb = len(self.K) - 2

    def pair_f(self, d: np.ndarray) -> np.ndarray:
        """Debye sums (without the 2/N) of the distance rows ``d`` (M, N): (M, nq). A distance
        of 0 (an atom and itself) adds nothing: the kernel's first row is sin(0)/0 := 0. Each
        row's distances are binned with linear weights into a sparse histogram, times K (7x
        faster than gathering K's rows per pair: no (M, N, nq) temporaries)."""
        from scipy import sparse

        out = np.empty((len(d), self.K.shape[1]))
        step = max(1, 2_000_000 // max(1, d.shape[1]))     # bounded temporaries
        for a in range(0, len(d), step):
            x = d[a:a + step] / self.h
            inside = x < self.nb                   # pairs beyond the calculator's range: no part
            x = np.minimum(x, self.nb)
            lo = np.floor(x).astype(np.int64)
            w = x - lo
            rows = np.repeat(np.arange(len(x)), x.shape[1])
            h = sparse.csr_matrix((np.concatenate([((1.0 - w) * inside).ravel(), (w * inside).ravel()]),
                                   (np.concatenate([rows, rows]), np.concatenate([lo.ravel(), lo.ravel() + 1]))),
                                  shape=(len(x), len(self.K)))
            out[a:a + step] = h @ self.K
        return out

    def rwp(self, f: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Rwp (scale profiled) of F rows (M, nq) for atom counts n (M,)."""
        g = (2.0 / n)[:, None] * (f @ self.T)
        c = g @ self.g
        hh = np.einsum("ij,ij->i", g, g)
        r2 = 1.0 - np.where(c > 0, c * c, 0.0) / np.maximum(hh * self.gg, 1e-300)
        return np.sqrt(np.clip(r2, 0.0, None))


def _sites(x: np.ndarray, bond: float, surface: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(x)
    pairs = np.array(sorted(tree.query_pairs(1.2 * bond)))
    if len(pairs) == 0:
        return np.zeros((0, 3))
    i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    keep = surface[i]
    # hollows first: where a continuation site is near a hollow (a decahedron's strained
    # lattice) the position one bond from three atoms is kept
    s = np.concatenate([_hollows(x, bond, pairs, surface), 2 * x[i[keep]] - x[j[keep]]])
    if len(s) == 0:
        return s
    d, _ = tree.query(s)
    s = s[d >= 0.9 * bond]
    if len(s) == 0:
        return s
    # one site per position (several bonds propose the same one), bonded to at least three atoms
    key = np.round(s / (0.3 * bond)).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    s = s[np.sort(first)]
    nbrs = np.array([len(v) for v in tree.query_ball_point(s, 1.2 * bond)])
    return s[nbrs >= 3]


def _hollows(x: np.ndarray, bond: float, pairs: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Three-fold hollows over the surface: the points one bond from each of three mutually
    bonded (nearest-neighbour) surface atoms, on both sides of their plane (the caller drops those closer than 0.9
    bonds to an atom, which the inner side always is). The lattice continuation reaches one of
    a close-packed facet's two hollows only (on fcc(111) the fcc hollow); an adatom sits in
    either, and on a twinned or hcp particle's facets the other one is the continuation of
    the stacking on the far side of a twin boundary."""
    # bonded: nearest neighbours (bcc's second shell, 1.155 bonds, is a neighbour for the
    # surface test, not an edge of a hollow)
    near = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1) < 1.1 * bond
    on = surface[pairs[:, 0]] & surface[pairs[:, 1]] & near
    if not on.any():
        return np.zeros((0, 3))
    a = np.zeros((len(x), len(x)), bool)
    a[pairs[on, 0], pairs[on, 1]] = a[pairs[on, 1], pairs[on, 0]] = True
    tri = [(p, q, r) for p, q in pairs[on] for r in np.flatnonzero(a[p] & a[q]) if r > q]
    if not tri:
        return np.zeros((0, 3))
    t = x[np.array(tri)]                                   # (T, 3 atoms, 3)
    m = t.mean(1)
    nrm = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    h = np.sqrt(np.clip(bond ** 2 - ((t - m[:, None]) ** 2).sum(2).mean(1), 0.0, None))[:, None]
    return np.concatenate([m + h * nrm, m - h * nrm])


def grow_prune(xyz: np.ndarray, g_obs: np.ndarray, grid, fit, bond: float,
               max_moves: int = MAX_MOVES, min_atoms: int = 4, rounds: int = 3,
               noise: float = 0.0) -> SearchResult:
    """Greedy atom removals and additions (see the module docstring). The physics of ``fit`` is
    held fixed within a round; between rounds it is fitted again to the changed structure (the
    physics of a wrong structure absorbs part of its misfit and hides moves that help).
    ``noise``: the Rwp the data's noise alone leaves (``verdict.noise_rwp``); gains are judged
    on the misfit beyond it (``verdict.gain_bound``)."""
    x = np.asarray(xyz, float)
    first = None
    removed = added = 0
    idle = 0
    scale = 1.0
    path = [(x, 0, 0, scale)]
    # phases of removals only and additions only, the physics fitted again after each: a
    # removal and an addition elsewhere can each look good while the physics still carries
    # the start's misfit, and together leave a wrong count. Both kinds run first, and the one
    # whose phase ends at the lower misfit goes on: with the start's physics, removals also
    # gain where atoms are missing (a decahedron lacking three adatoms: removals first took 1-4
    # surface atoms the additions could not put back, 4 out and 4 in at Rwp 0.009), and the
    # first move alone is a poor guide (vacancies interact: the second can gain only after
    # the first, while an adatom that is not there gains a little at once)
    kinds = ["remove", "add"]
    for k in range(2 * rounds):
        if k == 0:
            both = [_greedy(x, g_obs, grid, fit, bond, max_moves, min_atoms, kind, n0=len(xyz), noise=noise)
                    for kind in kinds]
            if all(r.removed + r.added == 0 for r in both):
                break
            res = min(both, key=lambda r: r.rwp)
            if res is both[1]:
                kinds.reverse()
        else:
            res = _greedy(x, g_obs, grid, fit, bond, max_moves, min_atoms, kinds[k % 2], n0=len(xyz), noise=noise)
        path += [(p, removed + a, added + b, scale) for p, a, b in res.path]
        first = res.rwp_start if first is None else first
        removed, added = removed + res.removed, added + res.added
        if res.removed + res.added == 0:
            idle += 1
            if idle == 2:
                break
            continue
        idle = 0
        x = res.xyz
        fit = grid.fit(x, g_obs, sizes=np.linspace(0.99, 1.01, 5), start=(fit.biso, fit.delta2, fit.qdamp))
        x = x * fit.size
        bond = bond * fit.size
        scale *= fit.size
    # the greedy path passes the right count before the physics catches up (size and Qdamp
    # trade off): every distinct structure on it is fitted with its own physics, best wins
    best = None
    for p, a, b, s in path:
        f = grid.fit(p, g_obs, sizes=np.linspace(0.995, 1.005, 3), start=(fit.biso, fit.delta2, fit.qdamp))
        if best is None or f.rwp < best[0]:
            best = (f.rwp, p * f.size, a, b, f, s * f.size)
    rwp, x, removed, added, f, scale = best
    return SearchResult(x - x.mean(0), rwp, first, removed, added, fit=f, scale=scale)


def _greedy(xyz, g_obs, grid, fit, bond, max_moves, min_atoms, kind, n0=None, noise=0.0) -> SearchResult:
    from scipy.spatial.distance import cdist

    sc = _Scorer(grid, fit, g_obs)
    x = np.asarray(xyz, float).copy()
    n = len(x)
    d = cdist(x, x)                      # zero diagonal: an atom and itself add nothing
    fa = sc.pair_f(d)                    # (N, nq): the Debye sum of each atom's pairs
    ft = fa.sum(0) / 2.0
    cur = float(sc.rwp(ft[None], np.array([n]))[0])
    start, removed, added = cur, 0, 0
    steps = []
    gone = np.zeros((0, 3))          # tabu: sites of removed atoms are not refilled
    new = np.zeros(len(x), bool)     # ...and added atoms are not removed again
    n0 = len(x) if n0 is None else n0
    limit = max(3, int(MAX_CHANGE * n0))
    for _ in range(max_moves):
        n = len(x)
        cn = (d < 1.2 * bond).sum(1) - 1
        surface = cn < cn.max() if cn.max() > cn.min() else np.ones(n, bool)
        best, move = gain_bound(cur, MIN_GAIN, noise), None
        if kind == "remove" and n > max(min_atoms, n0 - limit):
            cand = np.flatnonzero(surface & ~new)
            r = sc.rwp(ft[None] - fa[cand], np.full(len(cand), n - 1.0))
            k = int(np.argmin(r))
            if r[k] < best:
                best, move = float(r[k]), ("remove", int(cand[k]))
        sites = _sites(x, bond, surface) if kind == "add" and n < n0 + limit else np.zeros((0, 3))
        if len(sites) and len(gone):
            sites = sites[cdist(sites, gone).min(1) > 0.3 * bond]
        if len(sites):
            ds = cdist(sites, x)
            fs = sc.pair_f(ds)
            r = sc.rwp(ft[None] + fs, np.full(len(sites), n + 1.0))
            k = int(np.argmin(r))
            if r[k] < best:
                best, move = float(r[k]), ("add", k)
        if move is None:
            break
        if move[0] == "remove":
            i = move[1]
            ft = ft - fa[i]
            fa = np.delete(fa - sc.pair_f(d[:, i:i + 1]), i, axis=0)
            gone = np.vstack([gone, x[i]])
            x = np.delete(x, i, axis=0)
            new = np.delete(new, i)
            d = np.delete(np.delete(d, i, axis=0), i, axis=1)
            removed += 1
        else:
            s = sites[move[1]]
            ds_row = ds[move[1]]
            f_new = sc.pair_f(ds_row[None])[0]
            ft = ft + f_new
            fa = np.vstack([fa + sc.pair_f(ds_row[:, None]), f_new[None]])
            x = np.vstack([x, s])
            new = np.append(new, True)
            d = np.block([[d, ds_row[:, None]], [ds_row[None], np.zeros((1, 1))]])
            added += 1
        cur = best
        steps.append((x.copy(), removed, added))
    return SearchResult(x - x.mean(0), cur, start, removed, added, steps)


def facet_normals(x: np.ndarray, tol_deg: float = 3.0) -> np.ndarray:
    """Unit outward normals of the convex hull's facets, one per plane (coplanar triangles
    merged). Atoms on a plane are one layer: the facet's."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        eq = ConvexHull(x).equations
    except (QhullError, ValueError):
        return np.zeros((0, 3))
    out = []
    cos = np.cos(np.radians(tol_deg))
    for v in eq[:, :3]:
        v = v / np.linalg.norm(v)
        if not out or np.max(np.asarray(out) @ v) < cos:
            out.append(v)
    return np.asarray(out)


def _layer_sites(x: np.ndarray, bond: float, n: np.ndarray, top: np.ndarray, mirror: bool) -> np.ndarray:
    """The next layer on top of the facet atoms ``top`` (indices) along ``n``, for each top atom
    i and each bonded atom j below it: 2 x_i - x_j (the stacking goes on: fcc, bcc, sc) or, with
    ``mirror``, x_j mirrored through the facet plane (it turns back: hcp, a twin). Sites of the
    first layer above the facet only, at least 0.9 bonds from every atom."""
    from scipy.spatial import cKDTree

    tree = cKDTree(x)
    p = x @ n
    ptop = p[top].max()
    sites = []
    for i in top:
        for j in tree.query_ball_point(x[i], 1.2 * bond):
            h = ptop - p[j]
            if h >= 0.2 * bond:
                sites.append(x[j] + 2 * h * n if mirror else 2 * x[i] - x[j])
    if not sites:
        return np.zeros((0, 3))
    s = np.asarray(sites)
    ps = s @ n
    above = ps[ps > ptop + 0.2 * bond]
    if len(above) == 0:
        return np.zeros((0, 3))
    s = s[np.abs(ps - above.min()) < 0.2 * bond]
    d, _ = tree.query(s)
    s = s[d >= 0.9 * bond]
    if len(s) == 0:
        return s
    # one site per position: several bonds propose each (within 0.3 bonds; thermal noise in a
    # start spreads them), and no two sites closer than 0.9 bonds (an icosahedron's twin
    # boundaries continue both ways, 0.56 bonds apart)
    keep = []
    for k in range(len(s)):
        if not keep or np.min(np.linalg.norm(s[keep] - s[k], axis=1)) >= 0.9 * bond:
            keep.append(k)
    s = s[keep]
    # bonded to three atoms, counting the layer's other sites: the edge sites of a small
    # facet sit over one or two atoms only (each corner of a prism's end)
    nbrs = np.array([len(v) for v in tree.query_ball_point(s, 1.2 * bond)])
    own = np.array([len(v) - 1 for v in cKDTree(s).query_ball_point(s, 1.2 * bond)])
    return s[(nbrs >= 1) & (nbrs + own >= 3)]


def _layer_moves(x: np.ndarray, bond: float, kind: str) -> list[np.ndarray]:
    """Every facet layer removal (``kind`` "remove": indices) or addition ("add": sites, both
    stackings) of ``x``."""
    moves, tops = [], set()
    for n in facet_normals(x):
        p = x @ n
        top = np.flatnonzero(p > p.max() - 0.25 * bond)
        # a noisy structure's hull has many slightly tilted triangles per real facet: one
        # layer each (an 807-atom start with 0.08 A noise had 165 facets)
        if (key := tuple(top)) in tops:
            continue
        tops.add(key)
        if kind == "remove":
            if len(top) < len(x) - 3:
                moves.append(top)
            continue
        seen = None
        for mirror in (False, True):
            s = _layer_sites(x, bond, n, top, mirror)
            if len(s) >= 2 and not (seen is not None and len(s) == len(seen)
                                    and np.allclose(np.sort(s, 0), np.sort(seen, 0), atol=0.1 * bond)):
                moves.append(s)
                seen = s
    return moves


def layer_search(xyz: np.ndarray, g_obs: np.ndarray, grid, fit, bond: float,
                 max_moves: int = LAYER_MAX_MOVES, min_atoms: int = 4, noise: float = 0.0) -> SearchResult:
    """Greedy facet-layer removals and additions (module docstring). A layer moves the fit
    more than one atom does, and the physics held fixed hides it (a prism four layers too
    long: removing an end layer scores 0.0161 against the start's 0.0157 with the start's
    physics, 0.0142 with its own): every move is ranked with the held physics, the best
    LAYER_REFIT are fitted with their own, and the best of those is taken while it lowers
    its misfit beyond the noise (``grow_prune``) by MIN_GAIN."""
    x = np.asarray(xyz, float)
    n0 = len(x)
    removed = added = moves = idle = 0
    cur, first = fit, fit.rwp
    scale = 1.0
    path = []          # (structure, its fit, scale) after each move
    # phases of removals only and additions only, as in ``grow_prune``: the first greedy step
    # of a prism four layers too long was a layer added on its side (0.038 -> 0.031), after
    # which no sequence of end removals reached the prism
    for phase in itertools.cycle(("remove", "add")):
        if moves >= max_moves or idle == 2:
            break
        took = 0
        while moves < max_moves:
            step = _layer_step(x, g_obs, grid, cur, bond, phase, n0, min_atoms, noise)
            if step is None:
                break
            f, m, x = step
            removed, added = (removed + len(m), added) if phase == "remove" else (removed, added + len(m))
            cur = grid.fit(x, g_obs, sizes=np.linspace(0.995, 1.005, 3), start=(f.biso, f.delta2, f.qdamp))
            x = x * cur.size
            bond = bond * cur.size
            scale *= cur.size
            path.append((x - x.mean(0), cur, scale))
            moves, took = moves + 1, took + 1
        idle = 0 if took else idle + 1
    return SearchResult(x - x.mean(0), cur.rwp, first, removed, added, path=path, fit=cur, scale=scale)


def _layer_step(x, g_obs, grid, cur, bond, kind, n0, min_atoms, noise=0.0):
    """The best layer move of one kind, fitted with its own physics, if it lowers the misfit by
    MIN_GAIN: (fit, layer, new structure), else None."""
    from scipy.spatial.distance import cdist

    sc = _Scorer(grid, cur, g_obs)
    d = cdist(x, x)
    fa = sc.pair_f(d)
    ft = fa.sum(0) / 2.0
    n = len(x)
    scored = []
    for m in _layer_moves(x, bond, kind):
        if kind == "remove":
            if n - len(m) < max(min_atoms, (1 - LAYER_MAX_CHANGE) * n0):
                continue
            f = ft - fa[m].sum(0) + sc.pair_f(d[np.ix_(m, m)]).sum(0) / 2.0
            cnt = n - len(m)
        else:
            if n + len(m) > (1 + LAYER_MAX_CHANGE) * n0:
                continue
            f = ft + sc.pair_f(cdist(m, x)).sum(0) + sc.pair_f(cdist(m, m)).sum(0) / 2.0
            cnt = n + len(m)
        scored.append((float(sc.rwp(f[None], np.array([float(cnt)]))[0]), m))
    # symmetry-equivalent facets score alike: one of each
    uniq = {(round(r, 6), len(m)): m for r, m in sorted(scored, key=lambda t: -t[0])}
    best = None
    for m in [uniq[k] for k in sorted(uniq)][:LAYER_REFIT]:
        y = np.delete(x, m, axis=0) if kind == "remove" else np.vstack([x, m])
        f = grid.fit(y, g_obs, sizes=np.ones(1), start=(cur.biso, cur.delta2, cur.qdamp))
        if best is None or f.rwp < best[0].rwp:
            best = (f, m, y)
    if best is None or best[0].rwp >= gain_bound(cur.rwp, MIN_GAIN, noise):
        return None
    return best
