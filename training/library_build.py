"""Build the runtime's cluster library (``cbldm.runtime.library``): what ``cbldm-data library`` writes.

Recipe part: every distinct shape the recipe builds (331; 5-256 atoms), named by the first
label that builds it. Common part (up to 256 atoms): the shapes real metal particles take
that the recipe does not build: truncated octahedra and cuboctahedra (the fcc "magic"
clusters of 38, 79, 140, 201 atoms; ASE ``Octahedron(length, cutoff > 0)``) and fcc, hcp and
bcc spheres, every closed shell around an atom, a bond centre and the lattice's holes.
Extended part (257 to ``max_atoms``): the recipe's multiply-twinned and
fcc families beyond 256 atoms and the shapes real metal particles take at those sizes:
octahedra, truncated octahedra and cuboctahedra (ASE ``Octahedron(length, cutoff)``), Mackay
icosahedra, Ino/Marks decahedra (``Decahedron(p, q, r)``), and fcc, hcp and bcc spheres
centred on an atom and on the lattice's holes (one shape per ~8 % in atom count).
Twinned part (13 to 1500 atoms, added 2026-11-27): spheres of close-packed layers whose
stacking reverses once (a twin plane) or twice (an intrinsic or extrinsic stacking fault,
lamellar twins 3 and 4 layers apart), the most common defects of real fcc particles; the
recipe builds none, and without them a twinned particle was answered with a decahedron of
2.5-4 times its atom count (pair-distance error 2.6-5.4 A, the held-out families set).
"""
from __future__ import annotations

import math

import numpy as np

from cbldm.training.clusters import MAX_ATOMS, MIN_ATOMS, TYPES, unit_shapes
from cbldm.training.offrecipe import MOTIF
from cbldm.runtime.structure import nn_length
from cbldm.training.variants import lattice_centres, lattice_points, shape_key, shell_cuts, unit_bond


def recipe_entries() -> list[tuple[str, str, str, np.ndarray]]:
    seen, out = set(), []
    for kind in TYPES:
        for s in unit_shapes(kind):
            k = shape_key(s.xyz_unit)
            if k in seen:
                continue
            seen.add(k)
            out.append((f"recipe:{s.label()}", MOTIF[kind], "recipe", unit_bond(s.xyz_unit)))
    return out


def common_entries(max_atoms: int = MAX_ATOMS, min_atoms: int = MIN_ATOMS,
                   skip: set[str] | None = None) -> list[tuple[str, str, str, np.ndarray]]:
    """Shapes the recipe does not build, up to ``max_atoms``; ``skip``: shape keys already in
    the library (the recipe's)."""
    from cbldm.training.offrecipe import truncated_octahedra

    seen = set(skip or ())
    out = []

    def add(name, motif, x):
        if (k := shape_key(x)) not in seen:
            seen.add(k)
            out.append((f"common:{name}", motif, "common", unit_bond(x)))

    for name, x in truncated_octahedra(min_atoms, max_atoms):
        add(name, "fcc", x)
    rng = np.random.default_rng(5)
    for lat in ("fcc", "hcp", "bcc"):
        pts = lattice_points(lat, 6.0)
        for ci, c in enumerate(lattice_centres(lat, rng, n_random=0)):
            for x in shell_cuts(pts, c, max_atoms=max_atoms, min_atoms=min_atoms):
                add(f"{lat}_sphere_c{ci}_n{len(x)}", lat, x)
    return out


def extended_entries(max_atoms: int = 3000, min_atoms: int = MAX_ATOMS + 1) -> list[tuple[str, str, str, np.ndarray]]:
    from ase.cluster.decahedron import Decahedron
    from ase.cluster.icosahedron import Icosahedron
    from ase.cluster.octahedron import Octahedron

    s2 = math.sqrt(2)
    out = []

    def add(name, motif, atoms_or_xyz):
        x = atoms_or_xyz if isinstance(atoms_or_xyz, np.ndarray) else atoms_or_xyz.get_positions()
        if min_atoms <= len(x) <= max_atoms:
            out.append((f"ext:{name}", motif, "extended", unit_bond(x)))

    for length in range(4, 21):
        for cutoff in range(0, (length - 1) // 2 + 1):
            kind = "octahedron" if cutoff == 0 else ("cuboctahedron" if 2 * cutoff == length - 1
                                                      else "truncated_octahedron")
            add(f"{kind}_l{length}_c{cutoff}", "fcc", Octahedron("Cu", length, cutoff, latticeconstant=s2))
    for shells in range(5, 11):
        add(f"icosahedron_{shells}shells", "icosahedral", Icosahedron("Cu", shells, latticeconstant=s2))
    for p in range(1, 12):
        for q in range(1, 9):
            for r in range(0, 4):
                if r > q:
                    continue
                a = Decahedron("Cu", p, q, r, latticeconstant=s2)
                if len(a) > max_atoms:
                    break
                add(f"decahedron_p{p}_q{q}_r{r}", "decahedral", a)
    rng = np.random.default_rng(5)
    for lat in ("fcc", "hcp", "bcc"):
        pts = lattice_points(lat, 10.5)
        for ci, c in enumerate(lattice_centres(lat, rng, n_random=0)):
            last = 0
            for x in shell_cuts(pts, c, max_atoms=max_atoms, min_atoms=min_atoms):
                if len(x) >= last * 1.08:      # one sphere per ~8 % in atom count
                    add(f"{lat}_sphere_c{ci}_n{len(x)}", lat, x)
                    last = len(x)
    # one entry per distinct shape
    seen, uniq = set(), []
    for e in out:
        k = (len(e[3]), np.round(np.sort(np.linalg.norm(e[3], axis=1))[-20:], 3).tobytes())
        if k not in seen:
            seen.add(k)
            uniq.append(e)
    return uniq


TWIN_DEFECTS = {"twin": (0,), "isf": (0, 1), "esf": (0, 2), "lamellar3": (0, 3), "lamellar4": (0, 4)}


def reversed_stacking(n_layers: int, reversals) -> str:
    """Close-packed stacking (A, B, C) of ``n_layers`` that steps A->B->C and reverses direction
    at each layer index in ``reversals``: the layer of a reversal is a twin plane (the same
    letter on both sides, hcp-like), two reversals one layer apart are an intrinsic stacking
    fault, two apart an extrinsic one, more a lamellar twin."""
    pos, step, out = 0, 1, []
    for k in range(n_layers):
        if k in reversals:
            step = -step
        out.append("ABC"[pos % 3])
        pos += step
    return "".join(out)


def twinned_entries(max_atoms: int = 1500, min_atoms: int = 13,
                    skip: set[str] | None = None) -> list[tuple[str, str, str, np.ndarray]]:
    """Spheres of fcc with the ``TWIN_DEFECTS`` (motif ``fcc-twinned``: its own share of the
    search's proposals, so twinned spheres do not displace plain fcc ones), centred between the
    defect's planes on the atom column of the first reversal layer or on a hollow of it, in
    that layer or half a layer off; only spheres that hold every layer next to a reversal (the
    defect is inside); one shape per ~5 % in atom count up to 256 atoms, ~10 % beyond."""
    from cbldm.training.offrecipe import stacked_points

    seen = set(skip or ())
    dz = math.sqrt(2 / 3)
    n_layers = 41
    mid = n_layers // 2    # stacked_points puts this layer at z = 0; reversed_stacking makes it a C layer
    atom, hollow = (0.0, 1 / math.sqrt(3)), (0.0, 0.0)   # the C column; the A column, a hollow of C
    out = []
    for name, rel in TWIN_DEFECTS.items():
        pts = stacked_points(reversed_stacking(n_layers, [mid + k for k in rel]), 12.0)
        zc = 0.5 * (rel[0] + rel[-1]) * dz
        need = {mid + k + e for k in rel for e in (-1, 1)}
        for ci, ((x0, y0), oz) in enumerate(((atom, 0.0), (hollow, 0.0), (atom, dz / 2), (hollow, dz / 2))):
            last = 0
            for x in shell_cuts(pts, np.array([x0, y0, zc + oz]), min_atoms=min_atoms, max_atoms=max_atoms):
                if len(x) < last * (1.05 if len(x) <= MAX_ATOMS else 1.10):
                    continue
                if not need <= set(np.rint(x[:, 2] / dz).astype(int) + mid):
                    continue
                last = len(x)
                if (k := shape_key(x)) not in seen:
                    seen.add(k)
                    out.append((f"twin:{name}_sphere_c{ci}_n{len(x)}", "fcc-twinned", "twinned", unit_bond(x)))
    return out


def hcp_like_layers(xyz: np.ndarray) -> int:
    """Close-packed layers normal to z whose two neighbouring layers sit on the same lateral
    site (A-B-A): twin planes in an fcc stacking."""
    b = nn_length(xyz)
    layer = np.rint((xyz[:, 2] - xyz[:, 2].min()) / (np.sqrt(2 / 3) * b)).astype(int)
    # lateral site of each layer, A, B or C: the vote of its atoms in the layer's 2-D lattice
    a1, a2 = np.array([1.0, 0.0]), np.array([0.5, np.sqrt(3) / 2])
    inv = np.linalg.inv(np.column_stack([a1, a2]))
    site = {}
    ref = xyz[np.argmin(xyz[:, 2]), :2]          # an atom of the first layer: its site is A
    for k in np.unique(layer):
        f = ((xyz[layer == k][:, :2] - ref) / b) @ inv.T   # A (0,0), B (1/3,1/3), C (2/3,2/3), mod 1
        votes = np.rint(3 * (f[:, 0] - np.floor(f[:, 0]))).astype(int) % 3
        site[k] = int(np.bincount(votes, minlength=3).argmax())   # robust to thermal noise
    ks = sorted(site)
    return sum(site[ks[i - 1]] == site[ks[i + 1]] for i in range(1, len(ks) - 1))


def build(path, max_atoms: int = 3000, log=print) -> dict:
    from cbldm.runtime.library import write_library

    recipe = recipe_entries()
    common = common_entries(skip={shape_key(e[3]) for e in recipe})
    twinned = twinned_entries(skip={shape_key(e[3]) for e in recipe + common})
    entries = recipe + common + extended_entries(max_atoms) + twinned
    counts = {k: sum(e[2] == k for e in entries) for k in ("recipe", "common", "extended", "twinned")}
    log(f"library: {counts['recipe']} recipe shapes, {counts['common']} common shapes the recipe does "
        f"not build (up to {MAX_ATOMS} atoms), {counts['extended']} extended (257-{max_atoms} atoms), "
        f"{counts['twinned']} twinned spheres")
    info = write_library(path, entries, log=log)
    return info | counts
