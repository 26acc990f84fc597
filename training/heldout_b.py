"""Held-out families, second set: made when the library took in twinned fcc spheres
(2026-11-27), which made the first set's lamellar twins a library family.

Families real particles take that neither the cluster library nor the training pool holds:
- ``plate``: fcc (111) platelets 3-6 layers thick, hexagonal or triangular, three of five
  with a twin plane parallel to the flat faces (silver and gold nanoprisms);
- ``polytype``: spheres of the 4H (ABCB) and 6H (ABCACB) stackings, neither fcc nor hcp;
- ``bipyramid``: trigonal bipyramids, two fcc tetrahedra mirrored across a shared twin plane,
  vertices cut or not;
- ``multi-twin``: spheres whose stacking reverses three times, at two different spacings of
  2-4 layers (a spacing of 2 is an extrinsic stacking fault, which the library holds alone;
  up to 256 atoms mostly spacings 2 and 3 fit, so most small ones are a fault beside a twin).

Same layout as ``cbldm.training.heldout``: every shape up to 256 atoms twice (training
physics, group ``families-b``; beamline-like physics and noise, ``families-b-physics``), one
particle of 300-1500 atoms per family measured to 40-50 A (``families-b-large``).
``cbldm-data families --set b --out DIR``. Never train or tune on it.
"""
from __future__ import annotations

import math

import numpy as np

from cbldm.training.heldout import FCC_METALS, Item, draw, items_of
from cbldm.training.library_build import reversed_stacking
from cbldm.training.offrecipe import stacked_points

SEED = 31
GROUPS = ["families-b", "families-b-physics", "families-b-large"]
DZ = math.sqrt(2 / 3)


def _in_plane_normals(k: int, phase: float) -> np.ndarray:
    ang = phase + np.arange(k) * 2 * math.pi / k
    return np.stack([np.cos(ang), np.sin(ang)], 1)


def plate(radius: float, layers: int, twin: bool, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """``layers`` close-packed layers, hexagonal or triangular outline ``radius`` from the axis;
    a twinned plate has a twin plane in its middle layer."""
    outline = ("hex", "tri")[int(rng.integers(2))]
    n = 41
    seq = reversed_stacking(n, [n // 2]) if twin else "ABC" * (n // 3) + "ABC"[: n % 3]
    pts = stacked_points(seq, radius * 2 + layers + 3)
    c = np.array([*rng.uniform(-0.5, 0.5, 2), 0.0])
    # the plate's layers: ``layers`` consecutive ones around z = 0 (the middle one is the twin plane)
    lo = -(layers // 2)
    k = np.rint(pts[:, 2] / DZ).astype(int)
    normals = _in_plane_normals(6, math.pi / 6) if outline == "hex" else _in_plane_normals(3, math.pi / 2)
    lim = radius if outline == "hex" else radius / 2   # a triangle's inradius is half its circumradius
    inside = (k >= lo) & (k < lo + layers) & np.all((pts[:, :2] - c[:2]) @ normals.T <= lim, axis=1)
    return f"plate_{outline}{'_twin' if twin else ''}_r{radius:g}_l{layers}", pts[inside]


def polytype(radius: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A sphere of the 4H (ABCB) or 6H (ABCACB) stacking, its centre offset at random."""
    name, unit = (("4H", "ABCB"), ("6H", "ABCACB"))[int(rng.integers(2))]
    n = 2 * int(radius) + 13
    pts = stacked_points((unit * n)[:n], radius + 2)
    c = rng.uniform(-0.5, 0.5, 3)
    return f"polytype_{name}_r{radius:g}", pts[np.linalg.norm(pts - c, axis=1) <= radius]


def bipyramid(size: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """Two {111}-faced tetrahedra sharing their base, a twin plane: the points of a stacking
    mirrored at z = 0 whose (x, y, |z|) lies inside the three side faces ``size`` from the axis
    line (layers of 1, 3, 6, 10, ... atoms from each apex); the five vertex atoms cut or not."""
    cut = bool(rng.integers(2))
    n = 2 * int(size * 3) + 11
    pts = stacked_points(reversed_stacking(n, [n // 2]), size * 4 + 3)
    nz = np.array([0.0, 0.0, 1.0])
    # above the twin plane this stacking runs C -> B -> A, so its {111} side faces lean the
    # opposite way to those of offrecipe.tetrahedra_and_twins (A -> B -> C)
    across = [-np.array([math.cos(p), math.sin(p), 0.0]) for p in math.pi / 6 + np.arange(3) * 2 * math.pi / 3]
    faces = np.stack([math.sqrt(8) / 3 * a + nz / 3 for a in across])
    c = np.array([*rng.uniform(-0.2, 0.2, 2), 0.0])
    rel = pts - c
    rel[:, 2] = np.abs(rel[:, 2])
    x = pts[np.all(rel @ faces.T <= size + 1e-6, axis=1)]
    cut = cut and len(x) > 20   # too small to lose its corners: named uncut
    if cut:   # the two apices and the base triangle's three corners
        m = x - x.mean(0)
        vertices = {int(np.argmax(m @ d)) for d in [nz, -nz] + [-a for a in across]}
        x = np.delete(x, sorted(vertices), axis=0)
    return f"bipyramid_s{size:g}{'_cut' if cut else ''}", x


def multi_twin(radius: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A sphere whose stacking reverses three times, 2-4 layers apart (the two spacings differ;
    2 makes an extrinsic fault), every reversal inside the particle."""
    n = 2 * int(radius) + 21
    for _ in range(50):
        gaps = rng.integers(2, 5, 2)
        if gaps[0] == gaps[1] or (gaps.sum() + 2) * DZ / 2 > radius - 0.1:   # spacings the sphere cannot hold
            continue
        first = n // 2 - int(gaps.sum()) // 2
        twins = [first, first + int(gaps[0]), first + int(gaps.sum())]
        pts = stacked_points(reversed_stacking(n, twins), radius + 2)
        # centred between the outer twin planes, offset at random
        c = rng.uniform(-0.4, 0.4, 3) * np.array([1.0, 1.0, 0.25]) + np.array([0.0, 0.0, (twins[0] + twins[-1] - 2 * (n // 2)) * DZ / 2])
        x = pts[np.linalg.norm(pts - c, axis=1) <= radius]
        occupied = set(np.rint(x[:, 2] / DZ).astype(int) + n // 2)   # layer index, middle at z = 0
        if all({t - 1, t + 1} <= occupied for t in twins):
            return f"multi_twin_g{gaps[0]}{gaps[1]}_r{radius:g}", x
    raise AssertionError(f"multi-twin r {radius}: twin planes not inside the particle")  # design error


FAMILY_MOTIF = {"plate": "fcc", "polytype": "hcp", "bipyramid": "fcc", "multi-twin": "fcc"}


def shapes(rng: np.random.Generator, large: bool = False) -> list[tuple[str, str, np.ndarray]]:
    if large:
        plan = [("plate", lambda: plate(7.0, 6, True, rng)), ("polytype", lambda: polytype(5.0, rng)),
                ("bipyramid", lambda: bipyramid(2.6, rng)), ("multi-twin", lambda: multi_twin(5.0, rng))]
    else:
        plan = [("plate", lambda r=r, n=n, t=t: plate(r, n, t, rng))
                for r, n, t in ((2.5, 3, True), (3.5, 3, False), (3.5, 4, True), (4.5, 4, False))] + \
               [("polytype", lambda r=r: polytype(r, rng)) for r in (2.2, 2.6, 3.0, 3.5)] + \
               [("bipyramid", lambda s=s: bipyramid(s, rng)) for s in (1.1, 1.5, 1.9, 2.2)] + \
               [("multi-twin", lambda r=r: multi_twin(r, rng)) for r in (3.0, 3.2, 3.35, 3.5)]
    return draw(plan, large)


def build(seed: int = SEED) -> list[Item]:
    hcp_like = ["Co", "Ru", "Os", "Au", "Ag"]   # 4H/6H are reported for Au and Ag nanostructures
    return items_of(shapes, np.random.default_rng(seed), ("bf", "bp", "bl"), GROUPS, FAMILY_MOTIF,
                    lambda fam: hcp_like if fam == "polytype" else FCC_METALS)


def keys(seed: int = SEED) -> set[str]:
    """Shape keys of the set (up to 256 atoms): never in the training pool or the library."""
    from cbldm.training.variants import shape_key

    return {shape_key(x) for _, _, x in shapes(np.random.default_rng(seed))}
