"""Held-out large particles: 2,200-15,000 atoms (35-80 A), most beyond the cluster library's ~3,000.

What a beamline measures most often is a particle of 4-10 nm. The library's clusters stop
at ~3,000 atoms; this set asks what the runtime answers beyond them, and whether it says so.
Every particle is measured like one at a beamline: Qmax 18-28, Qmin 0.5-1.5, Qdamp 0.02-0.05,
Biso 0.4-1.0, delta2 0-2, noise 0.3-1.5 % of the peak, data to 50-80 A; thermally displaced
(0.01 bond lengths), half with 2-5 % vacancies. Families (ASE's cluster builders and lattice
cuts): fcc, hcp and bcc spheres cut around a random point, a truncated octahedron and a
cuboctahedron, Marks decahedra, Mackay icosahedra of 10-12 shells (10 shells, 2,869 atoms, is
the library's largest icosahedron). Two fcc spheres near the library's top (2,200-2,800
atoms) check that the library's own answers hold there.

Never train or tune on it: ``cbldm-data families --set large`` (seed 41) is the test set;
``--seed 43`` its tuning twin, where the runtime's choices for large particles are made.
"""
from __future__ import annotations

import math

import numpy as np

from cbldm.training.heldout import FCC_METALS, HCP_METALS, Item
from cbldm.training.variants import lattice_points, unit_bond

SEED = 41
GROUP = "large-beyond"
BCC_METALS = ["Fe", "W", "Nb", "Ta", "V", "Cr"]
MIN_ATOMS, MAX_ATOMS = 2500, 15000


def _sphere(lattice: str, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Lattice points (unit bond) within ``diameter`` / 2 of a random point near an atom."""
    c = rng.uniform(-0.5, 0.5, 3)
    pts = lattice_points(lattice, diameter / 2 + 2)
    return pts[np.linalg.norm(pts - c, axis=1) <= diameter / 2]


def shapes(rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, xyz at unit bond) of the set."""
    from ase.cluster import Decahedron, Icosahedron, Octahedron

    s2 = math.sqrt(2)
    out = []
    for d in rng.uniform(15.0, 27.0, 4):           # bonds: ~40-75 A for gold
        out.append(("fcc sphere", f"fcc_sphere_d{d:.1f}", _sphere("fcc", d, rng)))
    for d in rng.uniform(15.0, 22.0, 2):
        out.append(("hcp sphere", f"hcp_sphere_d{d:.1f}", _sphere("hcp", d, rng)))
    for d in rng.uniform(16.0, 22.0, 2):
        out.append(("bcc sphere", f"bcc_sphere_d{d:.1f}", _sphere("bcc", d, rng)))
    n = int(rng.integers(10, 13))                    # a cuboctahedron: length 2n + 1, cut n
    out.append(("cuboctahedron", f"cuboctahedron_l{2 * n + 1}", Octahedron("Cu", 2 * n + 1, n, latticeconstant=s2).get_positions()))
    length = int(rng.integers(21, 27))               # a truncated octahedron
    cut = int(rng.integers(5, (length - 1) // 2 - 1))
    out.append(("truncated octahedron", f"truncated_octahedron_l{length}_c{cut}",
                Octahedron("Cu", length, cut, latticeconstant=s2).get_positions()))
    for _ in range(2):
        while True:          # drawn again until inside the set's size range
            p, q, r = int(rng.integers(8, 13)), int(rng.integers(3, 8)), int(rng.integers(1, 4))
            x = Decahedron("Cu", p, q, r, latticeconstant=s2).get_positions()
            if MIN_ATOMS <= len(x) <= MAX_ATOMS:
                break
        out.append(("decahedron", f"decahedron_p{p}_q{q}_r{r}", x))
    for k in rng.choice([10, 11, 12], 2, replace=False):
        out.append(("icosahedron", f"icosahedron_k{k}", Icosahedron("Cu", int(k), latticeconstant=s2).get_positions()))
    for _ in range(2):                               # at the library's top
        d = float(rng.uniform(14.5, 15.5))
        out.append(("fcc sphere", f"fcc_sphere_top_d{d:.1f}", _sphere("fcc", d, rng)))
    return out


MOTIF = {"fcc sphere": "fcc", "hcp sphere": "hcp", "bcc sphere": "bcc", "truncated octahedron": "fcc",
         "cuboctahedron": "fcc", "decahedron": "decahedral", "icosahedron": "icosahedral"}


def build(seed: int = SEED) -> list[Item]:
    from cbldm.training.clusters import nearest_neighbour_lcs
    from cbldm.training.offrecipe import _measurement
    from cbldm.training.variants import PerturbConfig, perturb

    rng = np.random.default_rng(seed)
    items = []
    for fam, name, x in shapes(rng):
        x = unit_bond(x)
        lo = 2000 if "_top_" in name else MIN_ATOMS
        if not lo <= len(x) <= MAX_ATOMS:
            raise AssertionError(f"{name}: {len(x)} atoms, outside {lo}-{MAX_ATOMS}")  # a design error
        what = "thermal"
        if rng.random() < 0.5:
            x = perturb(x, rng, PerturbConfig(p_vacancy=1, vacancy_frac=(0.02, 0.05), p_adatom=0,
                                             p_thermal=0, p_strain=0), max_atoms=MAX_ATOMS)
            what = "vacancies+thermal"
        x = x + rng.normal(scale=0.01, size=x.shape)
        motif = MOTIF[fam]
        metals = HCP_METALS if motif == "hcp" else BCC_METALS if motif == "bcc" else FCC_METALS
        el = str(rng.choice(metals))
        p, _ = _measurement(rng, rmax=(50.0, 80.0))
        p = type(p)(**{**p.as_dict(), "qmax": round(float(rng.uniform(18, 28)), 1),
                       "qmin": round(float(rng.uniform(0.5, 1.5)), 2)})
        noise = float(rng.uniform(0.003, 0.015))
        d = x * float(rng.choice(nearest_neighbour_lcs(el)))
        diameter = float(2 * np.max(np.linalg.norm(d - d.mean(0), axis=1)))
        items.append(Item(f"lb_{name}_{len(x)}", GROUP, fam, motif, el, d, p, noise,
                          notes={"perturbation": what, "diameter_A": round(diameter, 2)}))
    return items
