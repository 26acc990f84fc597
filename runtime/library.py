"""A library of ideal clusters, searched against a PDF in one batched matrix product.

The recipe builds 331 distinct shapes (every one of its 12.6k structures is one of them at
some bond length); a search over them in a bond-length-free frame is exact for every recipe
shape, so it is both the baseline the networks must beat and a source of candidates. The
extended part holds the same families (and truncated octahedra, cuboctahedra, icosahedra,
Marks decahedra, fcc spheres) beyond the networks' 256 atoms, up to a few thousand, for
particles the networks cannot describe.

Storage (``library.npz``, arrays only, shipped beside the model and hashed in its manifest):
unit-bond coordinates (median nearest-neighbour distance 1), names, motifs, atom counts,
diameters, visible extents (``visible_extent``: how far each entry's PDF shows, which bounds
what is tried against a particle's data), and each entry's Debye sum without thermal damping
on a grid of unit-frame Q:

    F0(q) = (2/N) sum_{i<j} sin(q u_ij) / u_ij,   u = r / d (d: bond length)

A measured PDF with bond length d, Q range [Qmin, Qmax] and a guessed Biso becomes, in the
unit frame, the same sum on [Qmin d, Qmax d] with U / d^2; so one matrix T (the sine transform
onto the data's r / d grid, built per file) turns all entries' F0 into PDFs at once, and the
data, re-gridded at a few bond lengths around d, is compared with every entry in one product.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "cbldm-library/1"
Q_UNIT_STEP = 0.1          # resolves unit-frame distances up to pi / 0.1 = 31 bonds (~90 A)
Q_UNIT_MAX = 95.0          # Qmax 30 1/A at a 3.2 A bond
SEARCH_BISO = (0.3, 0.8)   # A^2: thermal dampings the search tries (refined per candidate later)
SEARCH_QDAMP = (0.0, 0.03, 0.06)   # 1/A: instrument resolutions it tries
SEARCH_STEP = 0.02         # unit-frame r step of the comparison grid (~0.06 A)
EXTENT_WINDOW = 0.36       # bond units (~1 A at 2.8 A bonds): the windows of verdict.particle_extent ...
EXTENT_FRACTION = 0.02     # ... and its threshold, a fraction of the first peak


# one family under two spellings (ASE's parameters both: recipe:Icosahedron_shell_4 and
# ext:icosahedron_5shells are 147 and 309 atoms; recipe:Octahedron_length_7 and
# ext:octahedron_l8_c0 231 and 344), and a cuboctahedron's two numbers are one (l = 2c + 1)
FAMILY_ALIASES = ((r"^icosahedron_shell(\d+)$", r"icosahedron\1shells"),
                  (r"^octahedron_length(\d+)$", r"octahedron_l\1_c0"),
                  (r"^cuboctahedron_l\d+_c(\d+)$", r"cuboctahedron_c\1"))


def family_of(name: str) -> tuple[str, tuple[int, ...]]:
    """A library entry's family and its parameters: the name less its kind (recipe, common, ext,
    ...) and spelling (recipe:Decahedron_p_4_q_1_r_0 and ext:decahedron_p5_q1_r0 are one family),
    its numbers replaced by '#', and those numbers."""
    stem = re.sub(r"_(?=\d)", "", name.split(":", 1)[-1].lower())
    for pat, to in FAMILY_ALIASES:
        stem = re.sub(pat, to, stem)
    return re.sub(r"\d+", "#", stem), tuple(int(v) for v in re.findall(r"\d+", stem))


class LibraryError(RuntimeError):
    pass


@dataclass
class Hit:
    index: int
    name: str
    motif: str
    n_atoms: int
    bond: float          # A: the bond length that fits best
    rwp: float           # search-grade Rwp (the best of a few dampings and Qdamps)


class Library:
    def __init__(self, path: Path):
        path = Path(path)
        try:
            z = np.load(path, allow_pickle=False)
            if str(z["format"]) != FORMAT:
                raise LibraryError(f"{path}: format {z['format']} is not {FORMAT}")
            z = {k: z[k] for k in ("n_atoms", "xyz", "name", "motif", "kind", "diameter", "f0", "q_step")
                 + (("extent",) if "extent" in z.files else ())}
        except (OSError, ValueError, KeyError) as exc:
            # numpy's 'pickled data ... allow_pickle=True' advice is not for a library: never pickle
            why = "not a .npz of arrays" if isinstance(exc, ValueError) and "pickle" in str(exc) \
                else f"{type(exc).__name__}: {exc}"
            raise LibraryError(f"{path}: not a cluster library ({why}; cbldm-data library writes one)") from None
        self.path = path
        self.n_atoms = z["n_atoms"].astype(int)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])
        self._xyz = z["xyz"]
        self.names = z["name"].astype(str)
        self.motif = z["motif"].astype(str)
        self.kind = z["kind"].astype(str)
        self.diameter = z["diameter"].astype(float)
        if "extent" in z:
            self.extent = z["extent"].astype(float)
        else:   # libraries written before 2026-11-29
            import warnings

            warnings.warn(f"{path}: no stored visible extents; computing them (about a minute for 1700 "
                          "entries; cbldm-data library writes a library that holds them)", stacklevel=2)
            self.extent = np.array([visible_extent(self.xyz(j)) for j in range(len(self.n_atoms))])
        self.f0 = z["f0"].astype(np.float64)
        self.q = np.arange(self.f0.shape[1]) * float(z["q_step"])
        self._index = {n: i for i, n in enumerate(self.names)}
        self._families: dict | None = None

    def __len__(self) -> int:
        return len(self.n_atoms)

    def index(self, name: str) -> int | None:
        return self._index.get(name)

    def neighbours(self, i: int) -> list[int]:
        """Entries of ``i``'s family one step away in one of its parameters: the family is the
        name with its numbers taken out and its kind (recipe, common, ext, ...) dropped, so that
        a family continues from the recipe's sizes into the extended ones; the step
        is to the next value that exists with the other parameters held (an hcp prism 7 layers
        long: 6 and 8 layers; a sphere: the next larger and smaller of its centre)."""
        if self._families is None:
            fam: dict = {}
            for k, name in enumerate(self.names):
                key, vals = family_of(str(name))
                for j in range(len(vals)):
                    fam.setdefault((key, j, vals[:j] + vals[j + 1:]), []).append((vals[j], k))
            self._families = {}
            for line in fam.values():
                at: dict = {}
                for v, k in line:
                    at.setdefault(v, []).append(k)
                vs = sorted(at)
                for a, b in zip(vs, vs[1:]):   # the same shape twice (recipe and ext): both linked
                    for e in at[a]:
                        for f in at[b]:
                            self._families.setdefault(e, []).append(f)
                            self._families.setdefault(f, []).append(e)
        return list(self._families.get(i, []))

    def further(self, i: int, param: int, sign: int) -> list[int]:
        """Entries of ``i``'s family one step from it in parameter ``param`` (the index of the
        number in its name, ``family_of``) in the direction ``sign``: where the family's line goes
        on (an hcp prism 7 layers long, sign -1 in its length: 6 layers; none past the family's
        last member the library holds)."""
        key, a = family_of(str(self.names[i]))
        out = []
        for k in self.neighbours(i):
            kk, c = family_of(str(self.names[k]))
            if kk == key and (c[param] - a[param]) * sign > 0:   # a neighbour differs in one parameter
                out.append(k)
        return out

    def xyz(self, i: int) -> np.ndarray:
        """Unit-bond coordinates of entry ``i`` (centred)."""
        return self._xyz[self.offsets[i]:self.offsets[i + 1]].astype(np.float64)

    def search(self, r: np.ndarray, g: np.ndarray, d: float, qmin: float, qmax: float,
               rmin: float, rmax: float, top: int = 8, max_atoms: int | None = None,
               min_atoms: int | None = None, span: float = 0.03, steps: int = 13,
               biso: tuple[float, ...] = SEARCH_BISO, qdamp: tuple[float, ...] = SEARCH_QDAMP,
               per_motif: int = 2, max_extent: float | None = None) -> list[Hit]:
        """The ``top`` entries whose PDFs best match G(r) (data on ``r``, fit range [rmin, rmax]),
        each at its best bond length within d (1 +- span) and its best of a few thermal
        dampings (``biso``, A^2) and instrument resolutions (``qdamp``, 1/A): an unmodelled Qdamp
        makes a large particle look small, so the search must try it."""
        sel = np.ones(len(self), bool)
        if max_atoms is not None:
            sel &= self.n_atoms <= max_atoms
        if min_atoms is not None:
            sel &= self.n_atoms >= min_atoms
        if max_extent is not None:   # A, against each entry's own visible extent (visible_extent)
            sel &= self.extent * d <= max_extent
        idx = np.flatnonzero(sel)
        if len(idx) == 0:
            return []
        # the comparison grid, in bond units; the data is read at r = u * bond for each bond
        u = np.arange(rmin / d, rmax / d, SEARCH_STEP)
        bonds = d * np.linspace(1 - span, 1 + span, steps)
        inside = [(u * b >= r[0]) & (u * b <= r[-1]) for b in bonds]
        data = np.stack([np.where(m, np.interp(u * b, r, g), 0.0) for m, b in zip(inside, bonds)])
        # library PDFs on u: the file's Q window and each damping, in unit-frame terms
        lo, hi = qmin * d, qmax * d
        # beyond the stored grid (Qmax d > 95, e.g. Qmax 35 for Au) the search sees less of Q than
        # the data has; the physics fit of each proposal uses all of it
        qs = (self.q >= lo) & (self.q < min(hi, self.q[-1] + 1e-9))
        q = self.q[qs]
        sines = np.sin(np.outer(q, u)) * ((2 / math.pi) * (self.q[1] - self.q[0]))
        f0 = self.f0[np.ix_(idx, np.flatnonzero(qs))]
        best = np.full(len(idx), np.inf)
        best_b = np.zeros(len(idx))
        for b_iso in biso:
            uiso = b_iso / (8 * math.pi**2) / d**2
            lib0 = f0 @ (sines * np.exp(-q**2 * uiso)[:, None])               # (E, n_u)
            for qd in qdamp:
                lib = lib0 * np.exp(-0.5 * (u * d * qd) ** 2)[None, :] if qd > 0 else lib0
                # Rwp^2 = 1 - (g.l)^2 / (|g|^2 |l|^2), scale >= 0, each bond on its own support
                for k, (m, row) in enumerate(zip(inside, data)):
                    gg = float(row @ row)
                    if gg <= 0:
                        continue
                    c = lib @ row
                    ll = np.einsum("ij,ij->i", lib[:, m], lib[:, m])
                    r2 = 1.0 - np.where(c > 0, c * c, 0.0) / np.maximum(ll * gg, 1e-300)
                    better = r2 < best
                    best[better], best_b[better] = r2[better], bonds[k]
        # diverse proposals: at most ``per_motif`` of each motif (a dozen near-identical fcc
        # octahedra would crowd out the decahedron that the physics fit prefers)
        order, used = [], {}
        for i in np.argsort(best):
            m = self.motif[idx[i]]
            if used.get(m, 0) < per_motif:
                order.append(i)
                used[m] = used.get(m, 0) + 1
            if len(order) == top:
                break
        return [Hit(int(idx[i]), self.names[idx[i]], self.motif[idx[i]], int(self.n_atoms[idx[i]]),
                    float(best_b[i]), float(math.sqrt(max(best[i], 0.0)))) for i in order]


def _pair_distances(x: np.ndarray, block: int = 512):
    """The distances of the pairs i < j of ``x``, a block of rows at a time: 3000 atoms would
    be 4.5M pairs at once."""
    n = len(x)
    for lo in range(0, n, block):
        d = np.linalg.norm(x[lo:lo + block, None] - x[None], axis=2)
        yield d[np.arange(lo, min(lo + block, n))[:, None] < np.arange(n)[None]]


def pair_counts(x: np.ndarray, bin_width: float, block: int = 512) -> np.ndarray:
    """How many pairs i < j of ``x`` lie in each bin of ``bin_width``, a block of rows at a time.
    Bins are centred on multiples of the width: a lattice's distances 1, 2, 3 ... sit on bin
    edges otherwise, and float32 coordinates (the stored library) move them across."""
    counts = np.zeros(1, np.int64)
    for d in _pair_distances(np.asarray(x, float), block):
        c = np.bincount(np.rint(d / bin_width).astype(np.int64))
        if len(c) > len(counts):
            counts = np.pad(counts, (0, len(c) - len(counts)))
        counts[:len(c)] += c
    return counts


def debye_f0(xyz_unit: np.ndarray, q: np.ndarray, decimals: int = 6) -> np.ndarray:
    """(2/N) sum_{i<j} sin(q u)/u over the distinct distances of a unit-bond cluster."""
    x = np.asarray(xyz_unit, float)
    n = len(x)
    f = np.zeros(len(q))
    if n < 2:
        return f
    for d in _pair_distances(x):
        du, cnt = np.unique(np.round(d, decimals), return_counts=True)
        for a in range(0, len(du), 4096):
            f += (cnt[a:a + 4096] / du[a:a + 4096]) @ np.sin(np.outer(du[a:a + 4096], q))
    return 2.0 * f / n


def visible_extent(xyz_unit: np.ndarray, bin_width: float = 0.02) -> float:
    """How far (bond units) a unit-bond cluster's PDF visibly reaches: the largest r whose
    EXTENT_WINDOW-wide window still holds a peak above EXTENT_FRACTION of the first, undamped,
    peak heights taken as pair counts / r (G's, for peaks of one width). It is the rule
    ``verdict.particle_extent`` applies to data, so the two compare (within +-2 A on the
    undamped PDFs of 60 library entries): on the tuning sets' truths it is 0.84 of the
    diameter at the median, down to 0.53 for thin rods, whose longest pairs are too few to be
    seen; small clusters can exceed their diameter by up to a window. Damping only shortens
    what data show, so a cluster whose own extent is far beyond the data's cannot be the
    particle; its diameter says less (a 15-cell Ru rod 63 A long, Qmax 17.9, Qdamp 0.033, with
    noise, shows signal to 23 A)."""
    x = np.asarray(xyz_unit, float)
    n = len(x)
    if n < 2:
        return 0.0
    counts = pair_counts(x, bin_width)
    r = np.arange(len(counts)) * bin_width
    peak = counts / np.maximum(r, 1.0)
    first = peak[(r > 0.85) & (r < 1.15)].max(initial=0.0)   # the nearest-neighbour peak
    w = max(1, int(round(EXTENT_WINDOW / bin_width)))
    peak = np.pad(peak, (0, -len(peak) % w))
    env = peak.reshape(-1, w).max(1)
    centres = (np.arange(len(env)) + 0.5) * w * bin_width - 0.5 * bin_width
    alive = np.flatnonzero(env > EXTENT_FRACTION * first)
    return float(centres[alive[-1]] + 0.5 * w * bin_width)


def write_library(path: Path, entries: list[tuple[str, str, str, np.ndarray]], log=print) -> dict:
    """``entries``: (name, motif, kind, unit-bond xyz). Writes ``path`` (npz, no pickle)."""
    from cbldm.runtime.fileutil import atomic_write

    q = np.arange(0.0, Q_UNIT_MAX + Q_UNIT_STEP / 2, Q_UNIT_STEP)
    xyz = [np.asarray(x, float) - np.asarray(x, float).mean(0) for _, _, _, x in entries]
    f0 = np.zeros((len(entries), len(q)), np.float32)
    for i, x in enumerate(xyz):
        f0[i] = debye_f0(x, q)
        if log and (i + 1) % 200 == 0:
            log(f"library: {i + 1}/{len(entries)} entries")
    from cbldm.runtime.structure import diameter

    diam = np.array([diameter(x) for x in xyz])
    ext = np.array([visible_extent(x) for x in xyz])
    arrays = {"format": np.array(FORMAT), "q_step": np.array(Q_UNIT_STEP),
              "xyz": np.concatenate(xyz).astype(np.float32),
              "n_atoms": np.array([len(x) for x in xyz], np.int32),
              "name": np.array([e[0] for e in entries]), "motif": np.array([e[1] for e in entries]),
              "kind": np.array([e[2] for e in entries]), "diameter": diam.astype(np.float32),
              "extent": ext.astype(np.float32), "f0": f0}
    atomic_write(Path(path), lambda p: np.savez_compressed(open(p, "wb"), **arrays))
    return {"entries": len(entries), "q_points": len(q)}
