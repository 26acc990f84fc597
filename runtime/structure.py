"""What kind of particle a structure is: coordination, common-neighbour analysis, motif, size.

Common-neighbour analysis (Honeycutt & Andersen 1987; Faken & Jonsson 1994) labels each
bonded pair by (common neighbours, bonds among them, longest chain of those bonds): 421 in
fcc, 421 and 422 in hcp, 555 on five-fold axes (icosahedra, decahedra), 444 and 666 in bcc
(second shell included), 000 in simple cubic. Bonds: pairs within 1.2 x the median
nearest-neighbour distance (1.2 also reaches bcc's second shell at 1.155).

Motif rules: an atom with twelve 555 bonds is an icosahedral centre -> icosahedral; 555
bonds otherwise -> decahedral (the five-fold axis); else the most frequent of close-packed
(421 + 422), bcc (444 + 666) and sc (000) bonds, close-packed split by the 422:421 ratio
(>= 0.6 hcp, whose bulk has 1:1; some 422 in fcc: twin planes or stacking faults). Small
clusters with none of these bonds: 'amorphous/unclear'.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

BOND_REACH = 1.2


def nn_distances(xyz: np.ndarray) -> np.ndarray:
    """Each atom's distance to its nearest neighbour (empty for fewer than two atoms)."""
    from scipy.spatial import cKDTree

    xyz = np.asarray(xyz, float)
    if len(xyz) < 2:
        return np.zeros(0)
    d, _ = cKDTree(xyz).query(xyz, k=2)
    return d[:, 1]


def nn_length(xyz: np.ndarray) -> float:
    """Median nearest-neighbour distance: the bond length a PDF's first peak reports."""
    return float(np.median(nn_distances(xyz)))


def bonds(xyz: np.ndarray, reach: float = BOND_REACH) -> tuple[list[set], float]:
    from scipy.spatial import cKDTree

    xyz = np.asarray(xyz, float)
    if len(xyz) < 2:
        return [set() for _ in xyz], 0.0
    nn = nn_length(xyz)
    nb = [set(x) - {i} for i, x in enumerate(cKDTree(xyz).query_ball_point(xyz, reach * nn))]
    return nb, nn


def coordination(xyz: np.ndarray) -> np.ndarray:
    nb, _ = bonds(xyz)
    return np.array([len(s) for s in nb])


def _longest_chain(edges: list[tuple[int, int]]) -> int:
    """Bonds in the largest connected cluster of the common-neighbour bonds."""
    if not edges:
        return 0
    adj: dict[int, set] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    best, seen = 0, set()
    for start in adj:
        if start in seen:
            continue
        stack, comp = [start], set()
        while stack:
            v = stack.pop()
            if v in comp:
                continue
            comp.add(v)
            stack.extend(adj[v] - comp)
        seen |= comp
        best = max(best, sum(1 for a, b in edges if a in comp))
    return best


def cna(xyz: np.ndarray) -> tuple[Counter, np.ndarray]:
    """Signature counts over all bonds, and per atom the number of its 555 bonds."""
    nb, _ = bonds(xyz)
    sig: Counter = Counter()
    five = np.zeros(len(nb), int)
    for i, ni in enumerate(nb):
        for j in ni:
            if j <= i:
                continue
            common = ni & nb[j]
            edges = [(a, b) for a in common for b in nb[a] & common if a < b]
            s = (len(common), len(edges), _longest_chain(edges))
            sig[s] += 1
            if s == (5, 5, 5):
                five[i] += 1
                five[j] += 1
    return sig, five


def motif(xyz: np.ndarray) -> dict:
    """{'motif': ..., 'signatures': fractions of the main CNA signatures}."""
    if len(xyz) < 4:
        return {"motif": "amorphous/unclear", "signatures": {}}
    sig, five = cna(xyz)
    total = max(1, sum(sig.values()))
    frac = {"421": sig[(4, 2, 1)] / total, "422": sig[(4, 2, 2)] / total, "555": sig[(5, 5, 5)] / total,
            "444+666": (sig[(4, 4, 4)] + sig[(6, 6, 6)]) / total, "000": sig[(0, 0, 0)] / total}
    if five.max() >= 12:
        m = "icosahedral"
    elif sig[(5, 5, 5)] >= 2:
        m = "decahedral"
    else:
        # bulk hcp has as many 422 as 421 bonds; fcc none
        close_packed = frac["421"] + frac["422"]
        crystal = {"cp": close_packed, "bcc": frac["444+666"], "sc": frac["000"]}
        m, v = max(crystal.items(), key=lambda kv: kv[1])
        if v < 0.1:
            m = "amorphous/unclear"
        elif m == "cp":
            ratio = frac["422"] / max(frac["421"], 1e-9)
            m = "hcp" if ratio >= 0.6 else "fcc with twin/stacking faults" if frac["422"] > 0.05 else "fcc"
    return {"motif": m, "signatures": {k: round(v, 3) for k, v in frac.items()}}


def diameter(xyz: np.ndarray) -> float:
    """Largest interatomic distance (A); for big clusters twice the largest radius."""
    xyz = np.asarray(xyz, float)
    if len(xyz) < 2:
        return 0.0
    c = xyz - xyz.mean(0)
    if len(xyz) > 1500:
        return float(2 * np.linalg.norm(c, axis=1).max())
    from scipy.spatial.distance import pdist

    return float(pdist(c).max())
