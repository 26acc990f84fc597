"""Mono-metallic nanoparticles of seven structure types, following DeepStruc's recipe.

DeepStruc (Kjaer et al., Digital Discovery 2023, data/utils/gen_xyz.py), which the
CbLDM paper follows:
- 28 metals; nearest-neighbour distance lc = 2 x metallic radius (mendeleev's
  ``metallic_radius``), here at 0.99 and 1.01 x that (two bond lengths per metal);
- SC / FCC / BCC: ASE cubic clusters with surfaces (100), (110), (111) and layers
  h <= k <= l up to 12; FCC lattice constant sqrt(2) lc; BCC uses lc as the cubic
  constant (a DeepStruc quirk: its nearest-neighbour distance is 0.866 lc);
- HCP: a = lc, c = 1.633 lc, sizes s1 <= s2 <= s3 up to 15;
- Icosahedron(shells <= 12), Decahedron(p, q <= 12, r <= 12), Octahedron(2 <= length <= 12),
  all with lattice constant sqrt(2) lc;
- keep 5..256 atoms; drop duplicates.

All builders are linear in the lattice constant, so each shape is built once at unit
size and scaled. Duplicates are removed by sorted pair distances (rounded to 1e-4 A)
regardless of element and type: the element does not change G(r), so two entries with
the same distances are the same training example.

Canonical atom order (it is what the kernel matrix's rows mean, so the networks learn
it): atoms sorted by distance from the centroid, rounded to 1e-3 A, ties broken by z,
then y, then x of the centred coordinates (rounded to 1e-3 A). Inner shells come first;
padding rows (zeros) follow the last atom.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
import numpy as np

# mendeleev 0.x, elements.metallic_radius (pm): the values DeepStruc's generator used
METALLIC_RADIUS_PM = {
    "Sc": 144, "Ti": 132, "V": 122, "Cr": 119, "Mn": 118, "Fe": 117, "Co": 116,
    "Ni": 115, "Cu": 118, "Zn": 121, "Y": 162, "Zr": 145, "Nb": 134, "Tc": 127,
    "Ru": 125, "Rh": 125, "Pd": 128, "Ag": 134, "Cd": 138, "Hf": 144, "Ta": 134,
    "W": 130, "Re": 128, "Os": 126, "Ir": 127, "Pt": 130, "Au": 134, "Hg": 139,
}
METALS = list(METALLIC_RADIUS_PM)
TYPES = ["FCC", "BCC", "SC", "HCP", "Icosahedron", "Decahedron", "Octahedron"]
SHORT = {"FCC": "fcc", "BCC": "bcc", "SC": "sc", "HCP": "hcp", "Icosahedron": "ico",
         "Decahedron": "dec", "Octahedron": "oct"}
MIN_ATOMS, MAX_ATOMS = 5, 256
BOND_FACTORS = (0.99, 1.01)


@dataclass(frozen=True)
class Shape:
    """One cluster geometry at unit lattice constant."""

    kind: str
    params: tuple[tuple[str, int], ...]
    xyz_unit: np.ndarray  # (N, 3) positions for lc = 1

    @property
    def n_atoms(self) -> int:
        return len(self.xyz_unit)

    def label(self) -> str:
        return "_".join([self.kind] + [f"{k}_{v}" for k, v in self.params])


@dataclass(frozen=True)
class Cluster:
    kind: str
    label: str
    element: str
    lc: float
    xyz: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.xyz)

    @property
    def name(self) -> str:
        return f"{self.label}_atom_{self.element}_lc_{self.lc:.4f}"


def canonical_order(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and sort atoms: radius, then z, y, x (all rounded to 1e-3 A)."""
    xyz = np.asarray(xyz, dtype=float)
    c = xyz - xyz.mean(axis=0)
    rad = np.round(np.linalg.norm(c, axis=1), 3)
    rc = np.round(c, 3) + 0.0  # +0.0 turns -0.0 into 0.0 so ties sort the same way
    order = np.lexsort((rc[:, 0], rc[:, 1], rc[:, 2], rad))
    return c[order]


def _build(kind: str, **kw):
    from ase.cluster.cubic import BodyCenteredCubic, FaceCenteredCubic, SimpleCubic
    from ase.cluster.decahedron import Decahedron
    from ase.cluster.icosahedron import Icosahedron
    from ase.cluster.octahedron import Octahedron
    from ase.lattice.hexagonal import HexagonalClosedPacked

    surfaces = [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    s2 = math.sqrt(2.0)
    if kind == "SC":
        return SimpleCubic("Cu", surfaces=surfaces, layers=kw["layers"], latticeconstant=1.0)
    if kind == "FCC":
        return FaceCenteredCubic("Cu", surfaces=surfaces, layers=kw["layers"], latticeconstant=s2)
    if kind == "BCC":
        return BodyCenteredCubic("Cu", surfaces=surfaces, layers=kw["layers"], latticeconstant=1.0)
    if kind == "HCP":
        return HexagonalClosedPacked(symbol="Cu", latticeconstant=(1.0, 1.633), size=kw["size"])
    if kind == "Icosahedron":
        return Icosahedron("Cu", kw["shell"], latticeconstant=s2)
    if kind == "Decahedron":
        return Decahedron("Cu", kw["p"], kw["q"], kw["r"], latticeconstant=s2)
    if kind == "Octahedron":
        return Octahedron("Cu", kw["length"], latticeconstant=s2)
    raise ValueError(f"unknown structure type {kind!r}")


def _shape_loops(kind: str) -> tuple[list[str], list[range]]:
    """Parameter names and ranges; the last parameter is the innermost loop."""
    if kind in ("SC", "FCC", "BCC"):
        return ["h", "k", "l"], [range(1, 13)] * 3
    if kind == "HCP":
        return ["Size1", "Size2", "Size3"], [range(1, 16)] * 3
    if kind == "Icosahedron":
        return ["shell"], [range(1, 13)]
    if kind == "Decahedron":
        return ["p", "q", "r"], [range(1, 13), range(1, 13), range(0, 13)]
    if kind == "Octahedron":
        return ["length"], [range(2, 13)]
    raise ValueError(f"unknown structure type {kind!r}")


def _kwargs(kind: str, values: tuple[int, ...]) -> dict:
    if kind in ("SC", "FCC", "BCC"):
        return {"layers": values}
    if kind == "HCP":
        return {"size": values}
    if kind == "Icosahedron":
        return {"shell": values[0]}
    if kind == "Octahedron":
        return {"length": values[0]}
    return dict(zip("pqr", values))


@lru_cache(maxsize=None)
def unit_shapes(kind: str, max_atoms: int = MAX_ATOMS, min_atoms: int = MIN_ATOMS) -> tuple[Shape, ...]:
    """Every shape of the recipe with min_atoms..max_atoms atoms, at unit lattice constant.

    Cubic and HCP sizes are ordered (h <= k <= l, s1 <= s2 <= s3) as in DeepStruc. The atom
    count never falls as the innermost parameter grows, so that loop stops at the first
    shape over max_atoms (measured: identical lists, 15x faster for decahedra).
    """
    names, ranges = _shape_loops(kind)
    ordered = kind in ("SC", "FCC", "BCC", "HCP")
    shapes = []

    def outer(prefix: tuple[int, ...]):
        depth = len(prefix)
        if depth == len(ranges) - 1:
            for v in ranges[-1]:
                values = prefix + (v,)
                if ordered and prefix and v < prefix[-1]:
                    continue
                n = len(atoms := _build(kind, **_kwargs(kind, values)))
                if n > max_atoms:
                    break
                if n >= min_atoms:
                    shapes.append(Shape(kind, tuple(zip(names, values)),
                                        canonical_order(atoms.get_positions())))
            return
        for v in ranges[depth]:
            if ordered and prefix and v < prefix[-1]:
                continue
            outer(prefix + (v,))

    outer(())
    return tuple(shapes)


def nearest_neighbour_lcs(element: str, factors=BOND_FACTORS) -> list[float]:
    d = 2.0 * METALLIC_RADIUS_PM[element] / 100.0
    return [round(d * f, 6) for f in factors]


def sorted_distances(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz, float)
    iu, ju = np.triu_indices(len(xyz), k=1)
    return np.sort(np.linalg.norm(xyz[iu] - xyz[ju], axis=1))


def distance_fingerprint(sorted_d: np.ndarray, n_atoms: int, decimals: int = 4) -> str:
    """Hash of the sorted pair distances rounded to 1e-4 A: equal for identical clusters."""
    key = np.round(sorted_d, decimals).astype(np.float64).tobytes()
    return hashlib.blake2b(key + n_atoms.to_bytes(4, "little"), digest_size=16).hexdigest()


def enumerate_clusters(types=TYPES, metals=METALS, factors=BOND_FACTORS,
                       max_atoms: int = MAX_ATOMS, min_atoms: int = MIN_ATOMS,
                       workers: int = 1) -> tuple[list[Cluster], dict]:
    """All unique clusters of the recipe, in a deterministic order, and dedup statistics.

    ASE's builders take ~20 s for all shapes; ``workers`` builds the types in parallel
    (the slow cubic types first). The result does not depend on ``workers``.
    """
    lc_owner: dict[float, str] = {}
    for el in metals:  # the first metal (recipe order) with a given lc names it
        for lc in nearest_neighbour_lcs(el, factors):
            lc_owner.setdefault(lc, el)
    lcs = sorted(lc_owner)
    seen: set[str] = set()
    out: list[Cluster] = []
    stats = {"candidates": 0, "duplicates": 0, "distinct_lattice_constants": len(lcs)}
    jobs = [(k, max_atoms, min_atoms) for k in types]
    if workers > 1:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose torch/ONNX Runtime thread pools already
        # ran can leave a child blocked on a lock copied mid-use (it hung the test suite)
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            all_shapes = pool.starmap(unit_shapes, jobs)
    else:
        all_shapes = [unit_shapes(*job) for job in jobs]
    for kind, shapes in zip(types, all_shapes):
        for shape in shapes:
            d_unit = sorted_distances(shape.xyz_unit)
            for lc in lcs:
                stats["candidates"] += 1
                xyz = shape.xyz_unit * lc
                fp = distance_fingerprint(d_unit * lc, shape.n_atoms)
                if fp in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(fp)
                out.append(Cluster(kind, shape.label(), lc_owner[lc], lc, xyz))
    return out, stats
