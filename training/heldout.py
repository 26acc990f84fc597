"""Held-out families: particle shapes that neither the cluster library nor the training pool
holds, made when the library grew to the common shapes (2026-11-27).

From then on the first out-of-recipe set's truncated octahedra and cuboctahedra are library
shapes, so its "unseen families" group partly measures a lookup. This set keeps the question
open: families real particles take that a library answer can only approximate.

- ``supported``: fcc spheres cut flat by a (111) or (100) plane, as a particle sitting on a
  substrate;
- ``lamellar-twin``: spheres of close-packed layers with two parallel twin planes 3-4 layers
  apart, both inside the particle;
- ``rod``: fcc cylinders along [100] or [110], 1.6-2.5 diameters long;
- ``hex-prism``: hcp hexagonal prisms ({10-10} sides, (0001) ends).

Every shape (up to 256 atoms) comes twice, with the training physics (group ``families``)
and with beamline-like physics and noise (``families-physics``), plus one particle of 300-1500
atoms per family measured to 40-50 A (``families-large``). Centres are offset at random so no
shape is a symmetric cut. Written by ``cbldm-data families --out DIR`` in the out-of-recipe
set's format (``cbldm-eval offrecipe --set DIR`` scores it). Never train or tune on it.
"""
from __future__ import annotations

import math

import numpy as np

from cbldm.training.clusters import MAX_ATOMS, METALS, MIN_ATOMS, canonical_order
from cbldm.training.offrecipe import Item, _bond, _measurement, stacked_points
from cbldm.training.variants import lattice_points, unit_bond

SEED = 23
GROUPS = ["families", "families-physics", "families-large"]
FCC_METALS = ["Au", "Pt", "Pd", "Ag", "Cu", "Ni", "Rh", "Ir"]
HCP_METALS = ["Co", "Ru", "Os", "Re", "Ti", "Zr"]


def supported(radius: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A sphere of fcc, the part below a (111) or (100) plane 0.2-0.6 radii under its centre
    removed."""
    facet = ("111", "100")[int(rng.integers(2))]
    n = np.array([1.0, 1.0, 1.0]) / math.sqrt(3) if facet == "111" else np.array([0.0, 0.0, 1.0])
    c = rng.uniform(-0.5, 0.5, 3)
    pts = lattice_points("fcc", radius + 3)
    rel = pts - c
    h = radius * rng.uniform(0.2, 0.6)
    x = pts[(np.linalg.norm(rel, axis=1) <= radius) & (rel @ n >= -h)]
    return f"supported_{facet}_r{radius:g}", x


def lamellar_sequence(n_layers: int, gap: int) -> tuple[str, list[int]]:
    """Close-packed stacking (letters A, B, C) that reverses at two layers ``gap`` apart around
    the middle: each of those is a twin plane (an hcp-like layer between two of the same letter),
    every other layer is fcc-like. Returns the sequence and the twin layers' indices."""
    first = n_layers // 2 - gap // 2
    twins = [first, first + gap]
    pos, step, seq = 0, 1, []
    for k in range(n_layers):
        if k in (first, first + gap):
            step = -step
        seq.append("ABC"[pos % 3])
        pos += step
    return "".join(seq), twins


def lamellar_twin(radius: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A sphere of ``lamellar_sequence`` stacking, the two twin planes 3 or 4 layers apart (2
    would be an extrinsic stacking fault), each with particle on both sides of it."""
    n_layers = 2 * int(radius) + 9
    dz = math.sqrt(2 / 3)
    for _ in range(50):
        gap = int(rng.integers(3, 5))
        seq, twins = lamellar_sequence(n_layers, gap)
        pts = stacked_points(seq, radius + 2)
        c = rng.uniform(-0.4, 0.4, 3)
        x = pts[np.linalg.norm(pts - c, axis=1) <= radius]
        occupied = set(np.rint(x[:, 2] / dz).astype(int) + n_layers // 2)   # middle layer at z = 0
        if all({t - 1, t + 1} <= occupied for t in twins):
            return f"lamellar_twin_gap{gap}_r{radius:g}", x
    raise AssertionError(f"lamellar twin r {radius}: twin planes not inside the particle")  # design error


def rod(radius: float, aspect: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """An fcc cylinder of ``radius`` along [100] or [110], ``aspect`` diameters long."""
    axis_name = ("100", "110")[int(rng.integers(2))]
    axis = np.array([1.0, 0.0, 0.0]) if axis_name == "100" else np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    half = aspect * radius
    pts = lattice_points("fcc", half + radius + 3)
    rel = pts - rng.uniform(-0.5, 0.5, 3)
    along = rel @ axis
    across = np.linalg.norm(rel - along[:, None] * axis, axis=1)
    return f"rod_{axis_name}_r{radius:g}_a{aspect:g}", pts[(np.abs(along) <= half) & (across <= radius)]


def hex_prism(radius: float, height: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """hcp inside a hexagonal prism: six {10-10} faces ``radius`` from the axis, (0001) ends
    ``height`` / 2 from the centre."""
    pts = lattice_points("hcp", math.hypot(radius * 1.2, height) + 3)
    rel = pts - rng.uniform(-0.5, 0.5, 3)
    ang = math.pi / 6 + np.arange(6) * math.pi / 3     # {10-10} normals of the a1 = x cell
    normals = np.stack([np.cos(ang), np.sin(ang)], 1)
    inside = np.all(np.abs(rel[:, :2] @ normals.T) <= radius, axis=1) & (np.abs(rel[:, 2]) <= height / 2)
    return f"hex_prism_r{radius:g}_h{height:g}", pts[inside]


FAMILY_MOTIF = {"supported": "fcc", "lamellar-twin": "fcc", "rod": "fcc", "hex-prism": "hcp"}


def shapes(rng: np.random.Generator, large: bool = False) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, unit-bond xyz): four sizes per family up to 256 atoms, or (``large``)
    one of 300-1500 atoms."""
    if large:
        plan = [("supported", lambda: supported(5.5, rng)), ("lamellar-twin", lambda: lamellar_twin(5.0, rng)),
                ("rod", lambda: rod(3.5, 1.6, rng)), ("hex-prism", lambda: hex_prism(4.5, 7.0, rng))]
    else:
        plan = [("supported", lambda r=r: supported(r, rng)) for r in (2.3, 2.8, 3.2, 3.6)] + \
               [("lamellar-twin", lambda r=r: lamellar_twin(r, rng)) for r in (2.4, 2.7, 3.0, 3.4)] + \
               [("rod", lambda r=r, a=a: rod(r, a, rng)) for r, a in ((1.2, 2.5), (1.6, 2.0), (2.0, 1.8), (2.3, 1.6))] + \
               [("hex-prism", lambda r=r, h=h: hex_prism(r, h, rng)) for r, h in ((1.4, 3.3), (2.0, 4.0), (2.4, 5.0), (2.8, 6.0))]
    return draw(plan, large)


def draw(plan, large: bool) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, xyz) of each (family, make) in ``plan``, ``make`` called again (another
    random centre or choice) where it lands outside the size range (300-1500 atoms if ``large``,
    else the recipe's)."""
    lo, hi = (300, 1500) if large else (MIN_ATOMS, MAX_ATOMS)
    out = []
    for fam, make in plan:
        for _ in range(20):
            name, x = make()
            if lo <= len(x) <= hi:
                break
        else:
            raise AssertionError(f"{name}: {len(x)} atoms, outside {lo}-{hi}")  # a design error, not data
        out.append((fam, name, x))
    return out


def items_of(shapes_fn, rng: np.random.Generator, prefixes: tuple[str, str, str], groups: list[str],
             motif: dict, metals) -> list[Item]:
    """A held-out set's items: each small shape with the training physics (any metal) and with
    beamline-like physics and noise, then the large ones thermally displaced and measured to
    40-50 A; ``metals(family)``: the elements for the last two."""
    items = []
    for fam, name, x in shapes_fn(rng):
        x = unit_bond(x)
        el = str(rng.choice(METALS))
        items.append(Item(f"{prefixes[0]}_{name}", groups[0], fam, motif[fam], el,
                          canonical_order(x * _bond(rng, el))))
        el = str(rng.choice(metals(fam)))
        p, noise = _measurement(rng)
        items.append(Item(f"{prefixes[1]}_{name}", groups[1], fam, motif[fam], el,
                          canonical_order(x * _bond(rng, el)), p, noise))
    for fam, name, x in shapes_fn(rng, large=True):
        x = unit_bond(x) + rng.normal(scale=0.01, size=x.shape)
        el = str(rng.choice(metals(fam)))
        p, noise = _measurement(rng, rmax=(40.0, 50.0))
        items.append(Item(f"{prefixes[2]}_{name}_{len(x)}", groups[2], fam, motif[fam], el,
                          x * _bond(rng, el), p, noise, notes={"perturbation": "thermal"}))
    return items


def build(seed: int = SEED) -> list[Item]:
    return items_of(shapes, np.random.default_rng(seed), ("hf", "hp", "hl"), GROUPS, FAMILY_MOTIF,
                    lambda fam: HCP_METALS if FAMILY_MOTIF[fam] == "hcp" else FCC_METALS)


def keys(seed: int = SEED) -> set[str]:
    """Shape keys of the set (up to 256 atoms): never in the training pool or the library."""
    from cbldm.training.variants import shape_key

    return {shape_key(x) for _, _, x in shapes(np.random.default_rng(seed))}
