"""Multiply twinned clusters beyond the library: Mackay icosahedra and Marks decahedra built on demand.

The cluster library stops at ~3,000 atoms. A lattice sphere of fitted diameter
(``cbldm.runtime.envelope``) answers larger crystalline particles, but an icosahedron or a
decahedron has no lattice to grow into: its PDF is not an fcc lattice's. These two families
are a handful of integers each (shells; p, q, r), so their larger members are built here,
numpy only, in the library's frame (unit median nearest-neighbour distance), and named as
the library names them (``ext:icosahedron_<k>shells``, ``ext:decahedron_p<p>_q<q>_r<r>``), so
that ``cbldm.runtime.library.family_of`` reads their parameters.

- Mackay icosahedron of k shells: the centre atom and, for n = 1..k-1, the triangular-lattice
  points of the 20 faces of an icosahedron of edge n (10 n^2 + 2 atoms per shell).
- Marks decahedron (p, q, r): a column of h = p + q + 2r - 1 atoms along the five-fold axis
  and, at each ring n = 1..h-1 of the pentagon, the sites (n - i) v_k + i v_(k+1) of its five
  sides (v: the pentagon's corners at the fcc (110) row spacing), each a column of h - n atoms
  centred on the axis; for r > 0 the sites within r of a corner along its sides are left out
  from ring p + r on (the re-entrant notches). p: atoms along the (100) facets perpendicular
  to the axis, q: along them parallel to it, r: depth of the notch. The same parameters as
  ASE's ``Decahedron`` (``tests/test_mtp.py`` compares them).
"""
from __future__ import annotations

import math
import re

import numpy as np

FAMILIES = ("icosahedron#shells", "decahedron_p#_q#_r#")


def _unit_bond(x: np.ndarray) -> np.ndarray:
    from cbldm.runtime.structure import nn_length

    x = np.asarray(x, float)
    x = x - x.mean(0)
    return x / nn_length(x) if len(x) > 1 else x


def icosahedron(shells: int) -> np.ndarray:
    """Mackay icosahedron of ``shells`` shells (1: one atom), unit median bond."""
    if shells < 1:
        raise ValueError("an icosahedron has at least one shell")
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = np.array([[0, s1, s2 * t] for s1 in (-1, 1) for s2 in (-1, 1)]
                 + [[s1, s2 * t, 0] for s1 in (-1, 1) for s2 in (-1, 1)]
                 + [[s2 * t, 0, s1] for s1 in (-1, 1) for s2 in (-1, 1)], float) / 2.0   # edge 1
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    faces = [(a, b, c) for a in range(12) for b in range(a + 1, 12) for c in range(b + 1, 12)
             if abs(d[a, b] - 1) < 1e-9 and abs(d[a, c] - 1) < 1e-9 and abs(d[b, c] - 1) < 1e-9]
    pts = [np.zeros((1, 3))]
    for n in range(1, shells):
        ij = np.array([(i, j) for i in range(n + 1) for j in range(n + 1 - i)], float)
        for a, b, c in faces:
            pts.append(n * v[a] + ij[:, :1] * (v[b] - v[a]) + ij[:, 1:] * (v[c] - v[a]))
    x = np.concatenate(pts)
    _, keep = np.unique(np.round(x, 6), axis=0, return_index=True)   # edges and corners are shared
    return _unit_bond(x[np.sort(keep)])


def decahedron(p: int, q: int, r: int) -> np.ndarray:
    """Marks decahedron (module docstring), unit median bond."""
    if p < 1 or q < 1 or r < 0:
        raise ValueError("a decahedron needs p >= 1, q >= 1, r >= 0")
    ang = math.pi / 2 + 2 * math.pi * np.arange(5) / 5
    spacing = math.sqrt(3.0) / 2.0                      # rows of (110) at unit bond: the pentagon's ring step
    corner = spacing * np.stack([np.cos(ang), np.sin(ang), np.zeros(5)], 1)
    h = p + q + 2 * r - 1
    g = p + 2 * r
    pts = [np.stack([np.zeros(h), np.zeros(h), np.arange(h) - (h - 1) / 2.0], 1)]
    for n in range(1, min(h, g)):
        for k in range(5):
            for i in range(n):
                if n - i < g - r and i < g - r:       # outside the re-entrant notch at either corner
                    xy = (n - i) * corner[k - 1] + i * corner[k]
                    col = np.arange(h - n) - (h - n - 1) / 2.0
                    pts.append(np.stack([np.full(h - n, xy[0]), np.full(h - n, xy[1]), col], 1))
    return _unit_bond(np.concatenate(pts))


def build(name: str) -> np.ndarray | None:
    """The cluster a library-style name gives (``ext:icosahedron_12shells``,
    ``ext:decahedron_p9_q4_r2``), else None."""
    m = re.fullmatch(r"(?:\w+:)?icosahedron_(\d+)shells", name)
    if m:
        return icosahedron(int(m.group(1)))
    m = re.fullmatch(r"(?:\w+:)?decahedron_p(\d+)_q(\d+)_r(\d+)", name)
    if m:
        return decahedron(*(int(v) for v in m.groups()))
    return None


def name_of(family: str, params: tuple[int, ...]) -> str:
    if family == FAMILIES[0]:
        return f"ext:icosahedron_{params[0]}shells"
    if family == FAMILIES[1]:
        return "ext:decahedron_p{}_q{}_r{}".format(*params)
    raise ValueError(f"not a family built here: {family}")


def atoms(family: str, params: tuple[int, ...]) -> int:
    """Atom count without building: shells 1..k-1 of 10 n^2 + 2; a decahedron's sites counted."""
    if family == FAMILIES[0]:
        k = params[0]
        return 1 + sum(10 * n * n + 2 for n in range(1, k))
    p, q, r = params
    h, g = p + q + 2 * r - 1, p + 2 * r
    total = h
    for n in range(1, min(h, g)):
        sites = sum(1 for i in range(n) if n - i < g - r and i < g - r)
        total += 5 * sites * (h - n)
    return total
