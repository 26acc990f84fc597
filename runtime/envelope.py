"""Particles larger than the library: a lattice inside a spherical envelope (attenuated crystal).

Beamline particles are often 4-10 nm across, 3,000-50,000 atoms: beyond the cluster library
(ideal clusters up to ~3,000 atoms, ~45 A). Fitted with the library alone, such a particle is
answered with the largest entry, its PDF kept reaching out by a Qdamp fitted to zero (a 60 A
gold sphere, 6,699 atoms, Qdamp 0.035: 2,988 atoms at Qdamp 0.000). At that size a PDF no
longer tells facets or single atoms apart; what it fixes is the lattice, the bond length
and how far the structure's correlations reach: the diameter. The model PDFgui users fit
then (``spdiameter``) is the bulk lattice's pair distances weighted by the sphere's
characteristic function, the fraction of a pair's translates that stay inside:

    gamma0(r; D) = 1 - 3r / (2D) + r^3 / (2D^3),  r <= D  (0 beyond)

so the pairs per atom at lattice shell r_k with multiplicity m_k are m_k gamma0(r_k; D) / 2.
This is the Debye sum of a sphere cut from the lattice with the shell counts smoothed (a cut
sphere's counts scatter around it by its surface roughness, a ~1 % effect at 40 A). The
diameter is scanned on a geometric grid, refined by a parabola, the physics (Biso, delta2,
Qdamp, scale, size) fitted at each as for any candidate (``FitGrid.fit_pairs``). The answer's
structure is the lattice sphere of that diameter around an atom: its count follows from the
diameter (3 % more atoms per 1 % of diameter), not from the data atom by atom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LATTICES = ("fcc", "hcp", "bcc", "sc")
D_STEP = 1.08        # geometric step of the diameter scan (then a parabola: within ~1 % of a
                     # finer scan's diameter on simulated 40 and 60 A spheres)
D_MAX = 120.0        # A: a 120 A sphere holds ~53,000 gold, ~83,000 nickel atoms. Beyond, a PDF
                     # measured to the usual 50-100 A hardly sees the envelope: the fit says "at least"
D_FLOOR = 10.0       # A: the scan's lowest diameter (a sphere that small is a library cluster)


CA_IDEAL = math.sqrt(8.0 / 3.0)
CA_RANGE = (1.55, 1.90)   # hcp metals' c/a: Os 1.58 ... Co 1.62 ... Zn 1.86, Cd 1.89
CA_STEP = 0.02


def lattice_basis(lattice: str, ca: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cell vectors (rows) and basis positions of ``lattice`` at unit nearest-neighbour distance;
    for hcp at unit in-plane spacing a, with c/a ``ca`` (default ideal, sqrt(8/3), where a is also
    the nearest-neighbour distance)."""
    if lattice == "fcc":
        a = math.sqrt(2.0)
        return a * np.eye(3), a * np.array([[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    if lattice == "bcc":
        a = 2.0 / math.sqrt(3.0)
        return a * np.eye(3), a * np.array([[0, 0, 0], [.5, .5, .5]])
    if lattice == "sc":
        return np.eye(3), np.zeros((1, 3))
    if lattice == "hcp":
        c = CA_IDEAL if ca is None else float(ca)
        cell = np.array([[1.0, 0, 0], [0.5, math.sqrt(3.0) / 2, 0], [0, 0, c]])
        return cell, np.array([[0, 0, 0], [0.5, math.sqrt(3.0) / 6, c / 2]])
    raise ValueError(f"lattice must be one of {', '.join(LATTICES)}, got {lattice!r}")


def lattice_points(lattice: str, radius: float, ca: float | None = None) -> np.ndarray:
    """Lattice points within ``radius`` (unit bond) of the atom at the origin."""
    cell, basis = lattice_basis(lattice, ca)
    # cells far enough along each vector: the cell's heights bound the repetitions needed
    vol = abs(np.linalg.det(cell))
    heights = [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    k = [int(math.ceil(radius / h)) + 1 for h in heights]
    g = np.stack(np.meshgrid(*(np.arange(-m, m + 1) for m in k), indexing="ij"), -1).reshape(-1, 3)
    pts = (g @ cell)[:, None, :] + basis[None]
    pts = pts.reshape(-1, 3)
    return pts[np.einsum("ij,ij->i", pts, pts) <= radius * radius + 1e-9]


_SHELLS: dict = {}


def _cached(key, make):
    if key not in _SHELLS:
        if len(_SHELLS) > 8:
            _SHELLS.pop(next(iter(_SHELLS)))
        _SHELLS[key] = make()
    return _SHELLS[key]


def _hcp_layers(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hcp's lattice points around an atom as (squared in-plane distance in a^2, layer index l,
    count): a point's distance is sqrt(s + (l c / 2)^2) at any c/a, so one set serves them all
    (to ``radius`` for c/a down to CA_RANGE[0])."""
    def make():
        pts = lattice_points("hcp", radius * CA_IDEAL / CA_RANGE[0] + 2.0, CA_IDEAL)
        s = np.round(pts[:, 0] ** 2 + pts[:, 1] ** 2, 6)
        lay = np.rint(np.abs(pts[:, 2]) / (CA_IDEAL / 2)).astype(np.int64)
        keep = s <= radius * radius + 1e-9
        key, c = np.unique(np.stack([s[keep], lay[keep]], 1), axis=0, return_counts=True)
        return key[:, 0], key[:, 1], c.astype(float)
    return _cached(("hcp-layers", round(radius, 3)), make)


def shells(lattice: str, radius: float, ca: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (unit bond; hcp: unit a) from an atom to the other lattice points within
    ``radius``, and how many points lie at each. Every atom of these lattices sees the same shells
    (hcp's two sites are related by inversion)."""
    if lattice == "hcp":
        c = CA_IDEAL if ca is None else float(ca)
        s, lay, cnt = _hcp_layers(radius)
        r = np.sqrt(s + (lay * c / 2) ** 2)
        keep = (r > 1e-6) & (r <= radius + 1e-9)
        k, inv = np.unique(np.round(r[keep], 6), return_inverse=True)
        return k, np.bincount(inv, cnt[keep])

    def make():
        p = lattice_points(lattice, radius)
        r = np.linalg.norm(p, axis=1)
        r = r[r > 1e-6]
        k, c = np.unique(np.round(r, 6), return_counts=True)
        return k, c.astype(float)
    return _cached((lattice, round(radius, 3)), make)


def gamma0(r: np.ndarray, diameter: float) -> np.ndarray:
    """The sphere's characteristic function: the fraction of pairs r apart that a sphere of
    ``diameter`` holds, relative to the same number of atoms in bulk."""
    x = np.asarray(r, float) / diameter
    return np.where(x < 1.0, 1.0 - 1.5 * x + 0.5 * x**3, 0.0)


def atoms_in_sphere(lattice: str, bond: float, diameter: float, ca: float | None = None) -> float:
    """A sphere's atom count from the lattice's density."""
    cell, basis = lattice_basis(lattice, ca)
    density = len(basis) / abs(np.linalg.det(cell)) / bond**3
    return density * math.pi * diameter**3 / 6.0


def sphere_pairs(r: np.ndarray, m: np.ndarray, lattice: str, bond: float, diameter: float,
                 ca: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The pairs of a ``lattice`` sphere of ``diameter`` from the lattice's shells (distances ``r``
    in A at ``bond``, multiplicities ``m``): the distances it holds, how many pairs at each
    (N m gamma0 / 2) and its atom count N, as ``FitGrid.fit_pairs`` and ``moments`` take them."""
    n = atoms_in_sphere(lattice, bond, diameter, ca)
    w = m * gamma0(r, diameter) * (0.5 * n)
    keep = w > 0
    return r[keep], w[keep], max(int(round(n)), 2)


def sphere_cut(lattice: str, bond: float, diameter: float, ca: float | None = None) -> np.ndarray:
    """The lattice's atoms within ``diameter`` / 2 of an atom, centred (A)."""
    x = lattice_points(lattice, 0.5 * diameter / bond, ca) * bond
    return x - x.mean(0)


@dataclass
class EnvelopeFit:
    lattice: str
    diameter: float      # A, at the fitted size
    bond: float          # A, nearest-neighbour distance at the fitted size
    n_atoms: int         # of the sphere cut at that diameter
    fit: object          # cbldm.runtime.fitting.PhysicsFit
    at_max: bool         # the diameter ran to D_MAX: the data say "at least"
    ca: float | None = None   # hcp: the fitted c/a (``bond`` is then the in-plane spacing a)

    def structure(self) -> np.ndarray:
        return sphere_cut(self.lattice, self.bond, self.diameter, self.ca)


def fit_envelope(grid, g_obs: np.ndarray, lattice: str, bond: float, d_min: float,
                 d_max: float = D_MAX, start: tuple[float, float, float] = (0.4, 0.0, 0.02)) -> EnvelopeFit:
    """The diameter (scanned from ``d_min`` to ``d_max`` A, then a parabola) and physics of a
    ``lattice`` sphere with nearest-neighbour distance ``bond`` that fit ``g_obs`` on ``grid``.
    Where the best diameter is the scan's first, the scan goes on down to D_FLOOR; where it is
    ``d_max``, the fit says so (``at_max``, "diameter" in the fit's ``at_bounds``)."""
    reach = grid.rmax_pair * 1.05       # pairs up to what the calculator sums, at any fitted size
    ca = None

    def pairs(bond, ca):
        r_unit, m = shells(lattice, reach / bond, ca)
        return r_unit * bond, m

    r, m = pairs(bond, ca)

    def at(diam: float, p0, sizes):
        return grid.fit_pairs(*sphere_pairs(r, m, lattice, bond, diam, ca), g_obs, sizes=sizes, start=p0)

    ds = [max(min(d_min, d_max / D_STEP ** 2), D_FLOOR)]
    while ds[-1] < d_max:
        ds.append(min(ds[-1] * D_STEP, d_max))
    # the scan holds the bond length, fitted first at a diameter inside the range: at 40 A a bond
    # 0.1 % off shifts the far peaks by a fifth of their width, which a larger sphere under more
    # Qdamp absorbs (a 40 A Pt sphere's scan went to 91 A with the library's bond)
    mid = ds[len(ds) // 3]
    f = at(mid, start, np.linspace(0.99, 1.01, 5))
    bond = bond * f.size
    r, m = pairs(bond, ca)
    one = np.ones(1)

    def fit_ca(diam, f, passes):
        """c/a scanned at ``diam`` with a held, then a fitted again, for each (step, span) of
        ``passes`` around the last (0.3 % in c is 0.1 A at 30 A)."""
        nonlocal ca, bond, r, m
        for step, lo, hi in passes:
            coarse = lo > 0
            cas = np.linspace(lo, hi, int(round((hi - lo) / step)) + 1) + (0.0 if coarse else ca)
            # the coarse pass lets a follow c (+-3 %): far from the ideal ratio (Zn 1.856) the a
            # fitted at the ideal one is off, and with it held the scan settled at 1.79, Rwp 0.49
            sizes = np.linspace(0.97, 1.03, 7) if coarse else one
            fits_ca = []
            for c in cas:
                ca = float(c)
                r, m = pairs(bond, ca)
                fits_ca.append(at(diam, (f.biso, f.delta2, f.qdamp), sizes))
            vals = np.array([g.rwp for g in fits_ca])
            if np.ptp(vals) > 0:        # the data tell ratios apart: else the last one stands
                k = int(np.nanargmin(vals))
                ca = float(np.clip(_vertex(cas, vals), *CA_RANGE))
                if coarse:
                    bond = bond * fits_ca[k].size
            else:
                ca = float(np.clip(ca if not coarse else CA_IDEAL, *CA_RANGE))
            r, m = pairs(bond, ca)
            f = at(diam, (f.biso, f.delta2, f.qdamp), np.linspace(0.99, 1.01, 5))
            bond = bond * f.size
            r, m = pairs(bond, ca)
        return f

    fine = ((CA_STEP / 10, -CA_STEP / 2, CA_STEP / 2), (CA_STEP / 50, -CA_STEP / 10, CA_STEP / 10))
    if lattice == "hcp":
        # real hcp metals are not ideal (Co 1.623, Ru 1.582, Zn 1.856): a 60 A Co sphere fitted
        # 0.154 at the ideal c/a where the noise leaves 0.043. The whole range, then finer;
        # again once the diameter is found
        ca = CA_IDEAL
        f = fit_ca(mid, f, ((CA_STEP, *CA_RANGE),) + fine)
    fits, p0 = [], (f.biso, f.delta2, f.qdamp)
    for dia in ds:
        f = at(dia, p0, one)
        fits.append(f)
        p0 = (f.biso, f.delta2, f.qdamp)
    # best at the scan's lower end: smaller spheres too, while they fit better
    while int(np.argmin([f.rwp for f in fits])) == 0 and ds[0] / D_STEP >= D_FLOOR:
        f0 = fits[0]
        ds.insert(0, ds[0] / D_STEP)
        fits.insert(0, at(ds[0], (f0.biso, f0.delta2, f0.qdamp), one))
    v = np.array([f.rwp for f in fits])
    k = int(np.argmin(v))
    best_d = ds[k]
    if 0 < k < len(ds) - 1:     # a parabola in log D through the best three
        x0, x1, x2 = np.log(ds[k - 1:k + 2])
        y0, y1, y2 = v[k - 1:k + 2] ** 2
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
        if a > 0:
            best_d = math.exp(float(np.clip(-b / (2 * a), x0, x2)))
    p0 = (fits[k].biso, fits[k].delta2, fits[k].qdamp)
    if lattice == "hcp":
        fit_ca(best_d, fits[k], fine)
    sizes = np.linspace(0.995, 1.005, 3)
    best = at(best_d, p0, sizes)
    if best_d != ds[k] and best.rwp > v[k]:     # the parabola's vertex fitted worse than the scan's point
        best_d, best = ds[k], at(ds[k], p0, sizes)
    at_max = k == len(ds) - 1
    dia, b = best_d * best.size, bond * best.size
    if at_max:     # the size fit scales the diameter too: a sphere at the scan's top stays there
        dia = min(dia, d_max)
    if at_max:
        best.at_bounds = list(best.at_bounds) + ["diameter"]
    return EnvelopeFit(lattice, float(dia), float(b), int(round(atoms_in_sphere(lattice, b, dia, ca))), best,
                       at_max, ca)


def _vertex(x: np.ndarray, v: np.ndarray) -> float:
    """Where a parabola through the lowest of ``v`` and its two neighbours has its minimum (the
    lowest point itself at the scan's ends)."""
    k = int(np.nanargmin(v))
    if k == 0 or k == len(x) - 1:
        return float(x[k])
    (x0, x1, x2), (y0, y1, y2) = x[k - 1:k + 2], v[k - 1:k + 2] ** 2
    den = y0 - 2 * y1 + y2
    return float(x1 + 0.5 * (x1 - x0) * (y0 - y2) / den) if den > 0 else float(x1)


def sphere_diameter(lattice: str, bond: float, n_atoms: int) -> float:
    """The diameter of a ``lattice`` sphere of ``n_atoms`` (the inverse of ``atoms_in_sphere``)."""
    return (n_atoms / atoms_in_sphere(lattice, bond, 1.0)) ** (1.0 / 3.0)
