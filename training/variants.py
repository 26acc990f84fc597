"""Structures beyond the recipe: more shape families and non-ideal versions of every shape.

The recipe builds 331 distinct shapes (each at 38 bond lengths, which the networks' scale
normalisation folds into one). A decoder that has seen 300 points of structure space can
only return those points: every "held-out" answer of the first shipped models was a
training shape. What the networks learn from here instead (all deterministic given a seed):

Base shapes (``base_pool``), unit nearest-neighbour distance, canonical atom order:
- the recipe's shapes of the training split (``cbldm.training.clusters``);
- lattice cuts: fcc, hcp, bcc and sc lattices cut by spheres and axis-aligned ellipsoids
  around an atom, a bond centre, an octahedral / tetrahedral hole and seeded random
  points, one shape per closed shell up to 256 atoms;
- partial shells: icosahedra and decahedra (up to 400 atoms) with the surface atoms nearest
  a seeded direction stripped (10-90 % of the surface), the way multiply-twinned particles
  grow their next shell from one side.
Per-sample perturbations (``perturb``), drawn anew each epoch:
- vacancies: 1 to 12 % of the surface atoms (fewer than the bulk coordination) removed;
- adatoms: atoms in hollow sites over the surface (1 to 5 % of the surface);
- thermal displacements: Gaussian, sigma 0 to 0.04 of the bond length;
- strain: an axis-aligned stretch of -2 to +2 % per axis.
Never in this pool: truncated octahedra, cuboctahedra and Wulff polyhedra (ASE's
``Octahedron(cutoff > 0)``, ``wulff_construction``), which the out-of-recipe test set
(``cbldm.training.offrecipe``) keeps as families the networks have never seen, and any
structure whose shape equals a validation or test shape (checked by ``shape_key``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

from cbldm.runtime.structure import nn_length  # noqa: F401  (the training modules' import)
from cbldm.training.clusters import MAX_ATOMS, MIN_ATOMS, canonical_order, sorted_distances

CN_CUTOFF = 1.2   # neighbours: within 1.2 x the bond length (bcc's second shell, 1.155, counts)


# -- shape identity -----------------------------------------------------------------------

def shape_key(xyz: np.ndarray, decimals: int = 3) -> str:
    """Scale-free identity of a cluster: atom count and sorted pair distances divided by the
    shortest, rounded. Equal for one shape at any bond length, element or orientation."""
    d = sorted_distances(xyz)
    if len(d) == 0:
        return f"{len(xyz)}:empty"
    d = np.round(d / d[0], decimals).astype(np.float64)
    h = hashlib.blake2b(d.tobytes() + len(xyz).to_bytes(4, "little"), digest_size=16).hexdigest()
    return f"{len(xyz)}:{h}"


def unit_bond(xyz: np.ndarray) -> np.ndarray:
    """Scaled so the median nearest-neighbour distance is 1, in canonical order."""
    xyz = np.asarray(xyz, float)
    return canonical_order(xyz / nn_length(xyz))


# -- lattices and cuts -------------------------------------------------------------------

def lattice_points(kind: str, radius: float) -> np.ndarray:
    """Points of a lattice with unit nearest-neighbour distance within ``radius`` of the origin
    (an atom at the origin), in the recipe builders' orientation (cube axes along x, y, z;
    hcp c along z)."""
    if kind == "sc":
        basis, cell = np.zeros((1, 3)), np.eye(3)
    elif kind == "bcc":
        a = 2 / math.sqrt(3)
        basis, cell = np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) * a, np.eye(3) * a
    elif kind == "fcc":
        a = math.sqrt(2)
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
        cell = np.eye(3) * a
    elif kind == "hcp":
        c = math.sqrt(8 / 3)
        cell = np.array([[1, 0, 0], [0.5, math.sqrt(3) / 2, 0], [0, 0, c]])
        basis = np.array([[0, 0, 0], [1 / 3, 1 / 3, 0.5]]) @ cell
    else:
        raise ValueError(f"unknown lattice {kind!r}")
    m = int(math.ceil(radius / min(np.linalg.norm(cell, axis=1)))) + 2
    r = np.arange(-m, m + 1)
    ijk = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pts = (ijk @ cell)[:, None, :] + basis[None]
    pts = pts.reshape(-1, 3)
    return pts[np.linalg.norm(pts, axis=1) <= radius + 1e-9]


def lattice_centres(kind: str, rng: np.random.Generator, n_random: int = 3) -> list[np.ndarray]:
    """Where a cut can be centred: on an atom, a bond centre, the lattice's holes, at random."""
    cents = [np.zeros(3)]
    if kind == "fcc":
        a = math.sqrt(2)
        cents += [np.array([0.25, 0.25, 0.0]) * a, np.array([0.5, 0, 0]) * a,
                  np.array([0.25, 0.25, 0.25]) * a]      # bond centre, octahedral, tetrahedral
    elif kind == "bcc":
        a = 2 / math.sqrt(3)
        cents += [np.array([0.25, 0.25, 0.25]) * a, np.array([0.5, 0, 0]) * a, np.array([0.5, 0.25, 0]) * a]
    elif kind == "sc":
        cents += [np.array([0.5, 0, 0]), np.array([0.5, 0.5, 0]), np.array([0.5, 0.5, 0.5])]
    elif kind == "hcp":
        c = math.sqrt(8 / 3)
        # bond centres in and between the layers, the octahedral hole (six atoms at 1/sqrt 2)
        # and the tetrahedral one (four at sqrt(3/8))
        cents += [np.array([0.5, 0, 0]), np.array([0.25, math.sqrt(3) / 12, c / 4]),
                  np.array([0, 1 / math.sqrt(3), c / 4]), np.array([0, 0, 3 * c / 8])]
    cents += [rng.uniform(-0.5, 0.5, 3) for _ in range(n_random)]
    return cents


def shell_cuts(pts: np.ndarray, centre: np.ndarray, axes=(1.0, 1.0, 1.0),
               min_atoms: int = MIN_ATOMS, max_atoms: int = MAX_ATOMS) -> list[np.ndarray]:
    """Every closed-shell cut of ``pts`` by an ellipsoid (semi-axes proportional to ``axes``)
    around ``centre``: the clusters of all points within growing 'radius'."""
    rel = (pts - centre) / np.asarray(axes)
    rad = np.round(np.linalg.norm(rel, axis=1), 6)
    order = np.argsort(rad, kind="stable")
    rad = rad[order]
    out = []
    # a shell closes where the next radius is larger
    ends = np.flatnonzero(np.diff(rad) > 1e-6) + 1
    for n in ends:
        if n > max_atoms:
            break
        if n >= min_atoms:
            out.append(pts[order[:n]])
    return out


ELLIPSOIDS = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.35), (1.0, 1.25, 1.6), (1.3, 1.0, 1.0), (1.0, 1.0, 0.75))


def lattice_cut_shapes(seed: int = 0, lattices=("fcc", "hcp", "bcc", "sc")) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for kind in lattices:
        pts = lattice_points(kind, 9.0)
        for ci, c in enumerate(lattice_centres(kind, rng)):
            for ai, axes in enumerate(ELLIPSOIDS):
                for xyz in shell_cuts(pts, c, axes):
                    out.append((f"cut_{kind}_c{ci}_e{ai}_n{len(xyz)}", xyz))
    return out


def partial_shell_shapes(seed: int = 0, per_shape: int = 4) -> list[tuple[str, np.ndarray]]:
    """Icosahedra and decahedra (up to 400 atoms) with part of their outer shell missing: the
    surface atoms nearest a seeded direction removed, 10 to 90 % of them, as when a
    multiply-twinned particle grows its next shell from one side."""
    from cbldm.training.clusters import unit_shapes

    rng = np.random.default_rng(seed + 1)
    out = []
    for kind in ("Icosahedron", "Decahedron"):
        for s in unit_shapes(kind, max_atoms=400):
            x = s.xyz_unit
            cn = coordination(x / nn_length(x))
            surf = np.flatnonzero(cn < cn.max())
            if len(surf) < 4 or cn.max() == cn.min():
                continue
            for _ in range(per_shape):
                v = rng.normal(size=3)
                v /= np.linalg.norm(v)
                k = int(round(rng.uniform(0.1, 0.9) * len(surf)))
                drop = surf[np.argsort(-(x[surf] @ v))[:k]]
                keep = np.setdiff1d(np.arange(len(x)), drop)
                if MIN_ATOMS <= len(keep) <= MAX_ATOMS:
                    out.append((f"strip_{s.label()}_{k}", x[keep]))
    return out


# -- the pool ------------------------------------------------------------------------------

@dataclass
class BasePool:
    """Unit-bond base shapes in canonical order, their names, families and sampling weights."""

    xyz: list[np.ndarray]
    names: list[str]
    family: np.ndarray          # 0 recipe, 1 lattice cut, 2 partial shell
    weight: np.ndarray          # sampling probability

    def __len__(self) -> int:
        return len(self.xyz)

    def summary(self) -> dict:
        fam = ["recipe", "lattice cut", "partial shell"]
        return {fam[f]: int(np.sum(self.family == f)) for f in range(3)} | {"total": len(self)}


def load_pool(path) -> BasePool:
    """A pool as cbldm-train caches it beside the data (``pool-<hash>.npz``, arrays only)."""
    z = np.load(path, allow_pickle=False)
    xyz = [x.astype(np.float64) for x in np.split(z["xyz"], np.cumsum(z["n"])[:-1])]
    return BasePool(xyz, z["names"].tolist(), z["family"], z["weight"])


def base_pool(recipe_shapes: list[np.ndarray], recipe_names: list[str], exclude_keys: set[str],
              seed: int = 0, recipe_share: float = 0.5) -> BasePool:
    """The recipe's training shapes plus the extra families, minus anything whose shape is in
    ``exclude_keys`` (validation/test shapes, the out-of-recipe set) and minus duplicates.
    Recipe shapes get ``recipe_share`` of the draws, the extra families the rest."""
    seen = set(exclude_keys)
    xyz, names, fam = [], [], []
    sources = [(0, n, x) for x, n in zip(recipe_shapes, recipe_names)] \
        + [(1, n, x) for n, x in lattice_cut_shapes(seed)] + [(2, n, x) for n, x in partial_shell_shapes(seed)]
    for f, n, x in sources:
        k = shape_key(x)
        if k in seen:
            continue
        seen.add(k)
        xyz.append(unit_bond(x))
        names.append(n)
        fam.append(f)
    fam = np.asarray(fam)
    w = np.where(fam == 0, recipe_share / max(1, np.sum(fam == 0)),
                 (1 - recipe_share) / max(1, np.sum(fam != 0)))
    return BasePool(xyz, names, fam, w / w.sum())


# -- perturbations ---------------------------------------------------------------------------

@dataclass
class PerturbConfig:
    p_vacancy: float = 0.35
    vacancy_frac: tuple = (0.01, 0.12)   # of the surface atoms (at least one)
    p_adatom: float = 0.15
    adatom_frac: tuple = (0.01, 0.05)
    p_thermal: float = 0.5
    thermal: tuple = (0.0, 0.04)         # sigma, fraction of the bond length
    p_strain: float = 0.3
    strain: float = 0.02                 # per axis, +-

    def as_dict(self) -> dict:
        return asdict(self)


def coordination(xyz: np.ndarray, cutoff: float = CN_CUTOFF) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(xyz)
    return np.array([len(n) - 1 for n in tree.query_ball_point(xyz, cutoff)])


def hollow_sites(xyz: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Positions at unit distance from three mutually bonded surface atoms, on the outer side,
    no closer than 0.9 to any atom: three-fold hollow sites over the facets."""
    from scipy.spatial import cKDTree

    s = np.flatnonzero(surface)
    tree = cKDTree(xyz)
    pairs = tree.query_pairs(CN_CUTOFF * 0.95)
    nb: dict[int, set] = {}
    for i, j in pairs:
        nb.setdefault(i, set()).add(j)
        nb.setdefault(j, set()).add(i)
    sset = set(s.tolist())
    sites = []
    centre = xyz.mean(0)
    for i in s:
        for j in nb.get(i, ()):
            if j <= i or j not in sset:
                continue
            for k in nb[i] & nb[j]:
                if k <= j or k not in sset:
                    continue
                a, b, c = xyz[i], xyz[j], xyz[k]
                m = (a + b + c) / 3
                nrm = np.cross(b - a, c - a)
                nn = np.linalg.norm(nrm)
                if nn < 1e-9:
                    continue
                nrm /= nn
                if nrm @ (m - centre) < 0:
                    nrm = -nrm
                h2 = 1.0 - np.mean(np.sum((np.stack([a, b, c]) - m) ** 2, axis=1))
                if h2 <= 0:
                    continue
                sites.append(m + math.sqrt(h2) * nrm)
    if not sites:
        return np.zeros((0, 3))
    sites = np.asarray(sites)
    d, _ = tree.query(sites)
    sites = sites[d >= 0.9]
    # one site per hollow (neighbouring triangles propose the same point)
    if len(sites) > 1:
        keep = []
        st = cKDTree(sites)
        taken = np.zeros(len(sites), bool)
        for i in range(len(sites)):
            if taken[i]:
                continue
            keep.append(i)
            taken[st.query_ball_point(sites[i], 0.5)] = True
        sites = sites[keep]
    return sites


def perturb(xyz: np.ndarray, rng: np.random.Generator, cfg: PerturbConfig,
            max_atoms: int = MAX_ATOMS) -> np.ndarray:
    """One non-ideal version of a unit-bond shape, in canonical order of its ideal sites
    (thermal noise is added after ordering, so the slot order stays that of the lattice)."""
    x = np.asarray(xyz, float)
    n = len(x)
    cn = coordination(x)
    surface = cn < cn.max() if cn.max() > cn.min() else np.ones(n, bool)
    if rng.random() < cfg.p_vacancy and n > MIN_ATOMS + 1:
        ns = int(surface.sum())
        k = max(1, int(round(rng.uniform(*cfg.vacancy_frac) * ns)))
        k = min(k, n - MIN_ATOMS, ns)
        drop = rng.choice(np.flatnonzero(surface), size=k, replace=False)
        keep = np.ones(n, bool)
        keep[drop] = False
        x, surface = x[keep], surface[keep]
    if rng.random() < cfg.p_adatom and len(x) < max_atoms:
        sites = hollow_sites(x, surface)
        if len(sites):
            k = max(1, int(round(rng.uniform(*cfg.adatom_frac) * surface.sum())))
            k = min(k, len(sites), max_atoms - len(x))
            add = sites[rng.choice(len(sites), size=k, replace=False)]
            # two adatoms in neighbouring hollows would overlap
            ok = [0]
            for i in range(1, len(add)):
                if np.min(np.linalg.norm(add[ok] - add[i], axis=1)) >= 0.9:
                    ok.append(i)
            x = np.concatenate([x, add[ok]])
    x = canonical_order(x)
    if rng.random() < cfg.p_strain:
        x = x * (1.0 + rng.uniform(-cfg.strain, cfg.strain, 3))
    if rng.random() < cfg.p_thermal:
        x = x + rng.normal(scale=rng.uniform(*cfg.thermal), size=x.shape)
    return x - x.mean(0)


# -- drawing a set of training structures ----------------------------------------------------

BOND_RANGE = (2.3, 3.25)  # A: the recipe's metals' nearest-neighbour distances (2 x metallic radius)
DRAW_CHUNK = 256


def _draw_chunk(args) -> list[np.ndarray]:
    pool_xyz, choice, seed, cfg, bond_range = args
    rng = np.random.default_rng(seed)
    out = []
    for c in choice:
        x = perturb(pool_xyz[c], rng, cfg)
        out.append(x * rng.uniform(*bond_range))
    return out


def draw_structures(pool: BasePool, n: int, seed: int, cfg: PerturbConfig,
                    bond_range=BOND_RANGE, workers: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` structures (A, centred, canonical order of their ideal sites): base shapes drawn by
    the pool's weights, each perturbed and given a bond length in ``bond_range``. The result
    depends on ``seed`` only, not on ``workers`` (chunks carry their own seeds)."""
    rng = np.random.default_rng(seed)
    choice = rng.choice(len(pool), size=n, p=pool.weight)
    seeds = rng.integers(0, 2**63 - 1, size=(n + DRAW_CHUNK - 1) // DRAW_CHUNK)
    jobs = []
    for j, lo in enumerate(range(0, n, DRAW_CHUNK)):
        ch = choice[lo:lo + DRAW_CHUNK]
        used = {int(c): pool.xyz[c] for c in ch}
        jobs.append((used, ch, int(seeds[j]), cfg, bond_range))
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as p:
            parts = p.map(_draw_chunk, jobs)
    else:
        parts = [_draw_chunk(j) for j in jobs]
    return [x for part in parts for x in part], choice
