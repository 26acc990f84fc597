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
"""
from __future__ import annotations

import math

import numpy as np

from cbldm.training.clusters import MAX_ATOMS, MIN_ATOMS, TYPES, unit_shapes
from cbldm.training.offrecipe import MOTIF
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


def build(path, max_atoms: int = 3000, log=print) -> dict:
    from cbldm.runtime.library import write_library

    recipe = recipe_entries()
    entries = recipe + common_entries(skip={shape_key(e[3]) for e in recipe}) + extended_entries(max_atoms)
    counts = {k: sum(e[2] == k for e in entries) for k in ("recipe", "common", "extended")}
    log(f"library: {counts['recipe']} recipe shapes, {counts['common']} common shapes the recipe does "
        f"not build (up to {MAX_ATOMS} atoms), {counts['extended']} extended (257-{max_atoms} atoms)")
    info = write_library(path, entries, log=log)
    return info | counts
