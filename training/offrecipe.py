"""The out-of-recipe test set: PDFs the networks are never trained or tuned on.

Deterministic (seeded), written by ``cbldm-data offrecipe --data DATA --out DIR`` as
PDFgetX3-style ``.gr`` files (header: composition, qmin, qmax, rmin, rmax, rstep, mode, as a
reduction program writes them; not the thermal or instrument parameters), each with its true
structure ``<name>.xyz`` and, in
``index.json``, the physics it was made with. Four groups:

- ``unseen-family``: shapes of families the recipe does not build and the training pool
  never holds: truncated octahedra and cuboctahedra (ASE ``Octahedron(length, cutoff)``)
  fcc Wulff polyhedra (``wulff_construction``, seeded surface energies), fcc tetrahedra
  and fcc spheres with a twin plane or a stacking fault; training physics.
- ``perturbed``: non-ideal versions of the dataset's *test-split* shapes (which no training
  draw perturbs): missing surface atoms, adatoms, thermal displacements, strain; training
  physics.
- ``physics``: recipe test shapes and unseen-family shapes measured with other physics:
  Qmax 17-23, Qmin 0.8-1.5, Qdamp 0.02-0.05, Biso 0.4-1.0, delta2 0-2, noise 0.5-2 % of the
  peak, data to 20-30 A.
- ``large``: 300-2500 atoms (beyond the networks' 256): fcc spheres and truncated
  octahedra, icosahedra, decahedra, with vacancies or thermal noise, measured to 40-50 A.

``excluded_keys()`` gives the shapes the training pool must never contain.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, PDFParams
from cbldm.training.clusters import MAX_ATOMS, METALS, MIN_ATOMS, canonical_order, nearest_neighbour_lcs

FORMAT = "cbldm-offrecipe/1"


@dataclass
class Item:
    name: str
    group: str
    family: str
    motif: str
    element: str
    xyz: np.ndarray
    params: PDFParams = DEEPSTRUC_PARAMS
    noise: float = 0.0                 # Gaussian noise, fraction of max |G|
    notes: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.xyz)


def _bond(rng, element: str) -> float:
    return float(rng.choice(nearest_neighbour_lcs(element)))


def truncated_octahedra(min_atoms: int = MIN_ATOMS, max_atoms: int = MAX_ATOMS) -> list[tuple[str, np.ndarray]]:
    """ASE Octahedron(length, cutoff > 0), unit bond: truncated octahedra; cuboctahedra where
    cutoff = (length - 1) / 2."""
    from ase.cluster.octahedron import Octahedron

    out = []
    for length in range(3, 20):
        for cutoff in range(1, (length - 1) // 2 + 1):
            a = Octahedron("Cu", length, cutoff, latticeconstant=math.sqrt(2))
            if min_atoms <= len(a) <= max_atoms:
                kind = "cuboctahedron" if 2 * cutoff == length - 1 else "truncated octahedron"
                out.append((f"{kind.replace(' ', '_')}_l{length}_c{cutoff}", a.get_positions()))
    return out


def wulff_polyhedra(sizes, seed: int) -> list[tuple[str, np.ndarray]]:
    from ase.cluster import wulff_construction

    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        e = rng.uniform([1.0, 0.7, 1.1], [1.3, 1.0, 1.6])
        a = wulff_construction("Cu", [(1, 0, 0), (1, 1, 1), (1, 1, 0)], list(e), int(size), "fcc",
                               rounding="closest", latticeconstant=math.sqrt(2))
        out.append((f"wulff_n{len(a)}_e{'-'.join(f'{v:.2f}' for v in e)}", a.get_positions()))
    return out


def stacked_points(sequence: str, radius: float) -> np.ndarray:
    """Close-packed layers (unit bond) stacked along z in ``sequence`` (letters A, B, C), the
    middle layer at z = 0: 'ABCABC' is fcc, 'ABAB' hcp, 'BCABACB' fcc twinned at its centre."""
    shift = {"A": np.zeros(2), "B": np.array([0.5, math.sqrt(3) / 6]), "C": np.array([1.0, math.sqrt(3) / 3])}
    dz = math.sqrt(2 / 3)
    m = int(radius) + 3
    i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    base = np.stack([i + 0.5 * j, j * math.sqrt(3) / 2], -1).reshape(-1, 2)
    mid = len(sequence) // 2
    layers = [np.column_stack([base + shift[s], np.full(len(base), (k - mid) * dz)])
              for k, s in enumerate(sequence)]
    pts = np.concatenate(layers)
    return pts[np.linalg.norm(pts, axis=1) <= radius + 1e-9]


def tetrahedra_and_twins(seed: int) -> list[tuple[str, str, np.ndarray]]:
    """fcc tetrahedra ({111} faces, corners cut or not) and fcc spheres with one twin plane
    or a stacking fault through them: common in real particles, built by neither the recipe
    nor the training pool."""
    rng = np.random.default_rng(seed)
    out = []
    pts = stacked_points("ABCABCABCABCABC", 9.0)
    # a tetrahedron of the close-packed stacking: the base layer and three {111} planes
    nz = np.array([0.0, 0.0, 1.0])
    faces = [nz * -1]
    for phi in (0, 2 * math.pi / 3, 4 * math.pi / 3):
        v = np.array([math.cos(phi + math.pi / 6), math.sin(phi + math.pi / 6), 0.0])
        faces.append(math.sqrt(8) / 3 * v + nz / 3)
    faces = np.asarray(faces)
    for edge in (4, 5, 6, 7, 8, 9):
        for cut in (0, 1):
            h = edge * math.sqrt(2 / 3) * 0.75
            c = np.array([0.0, 0.0, 0.0]) + rng.uniform(-0.05, 0.05, 3)
            dist = (pts - c) @ faces.T
            x = pts[np.all(dist <= h / 3 + 1e-6, axis=1) & (np.min(-dist[:, :1], axis=1) <= h + 1e-6)]
            if cut:  # corners removed: the atoms farthest from the centre along each vertex
                r = np.linalg.norm(x - x.mean(0), axis=1)
                x = x[r < np.sort(r)[-4] - 1e-6] if len(x) > 12 else x
            if MIN_ATOMS <= len(x) <= MAX_ATOMS:
                out.append((f"tetrahedron_e{edge}_c{cut}", "fcc", x))
    # 15 close-packed layers, the middle one (index 7) at z = 0
    for seq, name in (("CABCABCACBACBAC", "twinned fcc"),        # mirror plane at the middle layer
                      ("ABCABCBCABCABCA", "stacking-fault fcc")):  # one layer missing: ...ABC|BCA...
        p = stacked_points(seq, 8.0)
        for r in (2.2, 2.9, 3.6, 4.3):
            c = rng.uniform(-0.3, 0.3, 3) * np.array([1, 1, 0])
            x = p[np.linalg.norm(p - c, axis=1) <= r]
            if MIN_ATOMS <= len(x) <= MAX_ATOMS:
                out.append((f"{name.replace(' ', '_')}_r{r}", "fcc", x))
    return out


def excluded_keys() -> set[str]:
    """Shapes of the unseen families and the held-out families (up to 256 atoms): never in the
    training pool."""
    from cbldm.training.heldout import keys as heldout_keys
    from cbldm.training.heldout_b import keys as heldout_b_keys
    from cbldm.training.variants import shape_key

    shapes = [x for _, x in truncated_octahedra()] + [x for _, x in wulff_polyhedra(WULFF_SIZES, WULFF_SEED)] \
        + [x for _, _, x in tetrahedra_and_twins(WULFF_SEED)]
    return {shape_key(x) for x in shapes} | heldout_keys() | heldout_b_keys()


WULFF_SIZES = (30, 60, 90, 130, 170, 220)
WULFF_SEED = 11


def _measurement(rng, rmax=(20.0, 30.0)) -> tuple[PDFParams, float]:
    p = PDFParams(qmin=round(float(rng.uniform(0.8, 1.5)), 2), qmax=round(float(rng.uniform(17, 23)), 1),
                  biso=round(float(rng.uniform(0.4, 1.0)), 2), qdamp=round(float(rng.uniform(0.02, 0.05)), 3),
                  delta2=round(float(rng.uniform(0.0, 2.0)), 2), rmax=round(float(rng.uniform(*rmax)), 1))
    return p, float(rng.uniform(0.005, 0.02))


def _test_shapes(data_root: Path, split: str = "test") -> list[tuple[str, str, np.ndarray]]:
    """(label, type, unit-bond xyz) of the dataset's held-out shapes of ``split``."""
    from cbldm.training.clusters import TYPES, unit_shapes
    from cbldm.training.dataset import load_manifest
    from cbldm.training.variants import unit_bond

    test = set(load_manifest(data_root)["split_shapes"][split])
    out = []
    for kind in TYPES:
        for s in unit_shapes(kind):
            if s.label() in test:
                out.append((s.label(), kind, unit_bond(s.xyz_unit)))
    return out


MOTIF = {"FCC": "fcc", "BCC": "bcc", "SC": "sc", "HCP": "hcp", "Icosahedron": "icosahedral",
         "Decahedron": "decahedral", "Octahedron": "fcc"}


def tuning_set(data_root: Path, seed: int = 1) -> list[Item]:
    """The same non-ideal versions and measurement physics, made from the *validation*
    shapes with another seed: where thresholds of the pipeline are chosen, so that the
    out-of-recipe set stays untouched."""
    items = build(data_root, seed, split="val")
    return [it for it in items if it.group in ("perturbed", "physics") and it.notes.get("base_shape")]


def build(data_root: Path, seed: int = 0, split: str = "test") -> list[Item]:
    from cbldm.training.variants import PerturbConfig, perturb, unit_bond

    rng = np.random.default_rng(seed)
    items: list[Item] = []

    def element():
        return str(rng.choice(METALS))

    # unseen families, training physics
    fams = [(n, "fcc", x) for n, x in truncated_octahedra()] + \
           [(n, "fcc", x) for n, x in wulff_polyhedra(WULFF_SIZES, WULFF_SEED)] + \
           tetrahedra_and_twins(WULFF_SEED)
    from cbldm.training.clusters import TYPES, unit_shapes
    from cbldm.training.variants import shape_key

    seen = {shape_key(s.xyz_unit) for k in TYPES for s in unit_shapes(k)}  # the recipe's shapes
    for name, motif, x in fams:
        if (key := shape_key(x)) in seen:  # e.g. the 13-atom cuboctahedron is a recipe shape
            continue
        seen.add(key)
        el = element()
        items.append(Item(f"uf_{name}", "unseen-family", name.split("_l")[0].split("_n")[0], motif, el,
                          canonical_order(unit_bond(x) * _bond(rng, el))))
    # non-ideal test shapes, training physics
    tests = _test_shapes(data_root, split)
    kinds = {
        "vacancies": PerturbConfig(p_vacancy=1, vacancy_frac=(0.03, 0.10), p_adatom=0, p_thermal=0, p_strain=0),
        "adatoms": PerturbConfig(p_vacancy=0, p_adatom=1, adatom_frac=(0.02, 0.06), p_thermal=0, p_strain=0),
        "thermal": PerturbConfig(p_vacancy=0, p_adatom=0, p_thermal=1, thermal=(0.02, 0.04), p_strain=0),
        "strain+thermal": PerturbConfig(p_vacancy=0, p_adatom=0, p_thermal=1, thermal=(0.01, 0.02),
                                        p_strain=1, strain=0.025),
    }
    order = rng.permutation(len(tests))
    for j, i in enumerate(order[:28]):
        label, kind, x = tests[i]
        what = list(kinds)[j % len(kinds)]
        el = element()
        y = perturb(x, rng, kinds[what])
        if not MIN_ATOMS <= len(y) <= MAX_ATOMS:
            continue
        items.append(Item(f"pt_{label}_{what}", "perturbed", what, MOTIF[kind], el, y * _bond(rng, el),
                          notes={"base_shape": label, "base_atoms": len(x)}))
    # other measurement physics: test shapes and unseen families
    for j, i in enumerate(order[:14]):
        label, kind, x = tests[i]
        el = element()
        p, noise = _measurement(rng)
        items.append(Item(f"ph_{label}", "physics", "recipe test shape", MOTIF[kind], el,
                          x * _bond(rng, el), p, noise, notes={"base_shape": label}))
    for k in rng.permutation(len(fams))[:10]:
        name, motif, x = fams[k]
        el = element()
        p, noise = _measurement(rng)
        items.append(Item(f"ph_{name}", "physics", name.split("_l")[0].split("_n")[0], motif, el,
                          canonical_order(unit_bond(x) * _bond(rng, el)), p, noise))
    items += large_items(rng)
    return items


def large_items(rng: np.random.Generator) -> list[Item]:
    """300-2500 atoms, measured to 40-50 A with beamline-like physics."""
    from ase.cluster.decahedron import Decahedron
    from ase.cluster.icosahedron import Icosahedron

    from cbldm.training.variants import PerturbConfig, lattice_points, perturb, unit_bond

    s2 = math.sqrt(2)
    shapes = []
    for r in (4.2, 5.6, 7.3):
        c = rng.uniform(-0.4, 0.4, 3)
        pts = lattice_points("fcc", r + 2)
        shapes.append(("fcc sphere", "fcc", pts[np.linalg.norm(pts - c, axis=1) <= r]))
    shapes += [(n.split("_l")[0].replace("_", " "), "fcc", x)
               for n, x in truncated_octahedra(300, 2500) if n.endswith(("l9_c3", "l11_c3", "l13_c4"))]
    shapes += [("icosahedron", "icosahedral", Icosahedron("Cu", k, latticeconstant=s2).get_positions())
               for k in (5, 6, 8)]
    shapes += [("decahedron", "decahedral", Decahedron("Cu", p, q, r, latticeconstant=s2).get_positions())
               for p, q, r in ((4, 3, 1), (6, 2, 2), (5, 5, 2))]
    out = []
    for name, motif, x in shapes:
        x = unit_bond(x)
        what = "thermal"
        if rng.random() < 0.5:
            x = perturb(x, rng, PerturbConfig(p_vacancy=1, vacancy_frac=(0.02, 0.05), p_adatom=0,
                                             p_thermal=0, p_strain=0), max_atoms=10_000)
            what = "vacancies+thermal"
        x = x + rng.normal(scale=0.01, size=x.shape)
        el = str(rng.choice(["Au", "Pt", "Pd", "Ag", "Cu", "Ni"]))
        p, noise = _measurement(rng, rmax=(40.0, 50.0))
        d = x * _bond(rng, el)
        diameter = float(2 * np.max(np.linalg.norm(d - d.mean(0), axis=1)))
        out.append(Item(f"lg_{name.replace(' ', '_')}_{len(x)}", "large", name, motif, el, d, p, noise,
                        notes={"perturbation": what, "diameter_A": round(diameter, 2)}))
    return out


def write(items: list[Item], out: Path, seed: int = 0, log=print, bare: bool = False) -> dict:
    """Each item's PDF (its own physics and noise) as ``<name>.gr``, truth as ``<name>.xyz``.
    ``bare``: as users export a PDF, with no Q range in the header (the composition only), and the
    noise, of the same RMS, cut with F(Q) at Qmax as a reduction program's is (white noise on the r
    grid holds every Q; the Q range then has to come from the data, ``fitting.band_edge``)."""
    import ase.io
    from ase import Atoms

    from cbldm.runtime.fileutil import atomic_write, atomic_write_text
    from cbldm.runtime.pdfio import write_gr

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 99)
    index = []
    for it in items:
        calc = DebyePDF(it.params)
        g = calc.calc(it.xyz, it.element, method="exact" if it.n_atoms <= 400 else "histogram")
        p = it.params
        if it.noise:
            noise = rng.normal(scale=it.noise * np.abs(g).max(), size=g.shape)
            if bare:
                spec = np.fft.rfft(noise)
                spec[2 * np.pi * np.fft.rfftfreq(len(noise), p.rstep) > p.qmax] = 0.0
                cut = np.fft.irfft(spec, len(noise))
                noise = cut * (it.noise * np.abs(g).max() / cut.std())
            g = g + noise
        header = {"composition": it.element} if bare else \
            {"composition": it.element, "qmin": p.qmin, "qmax": p.qmax, "rmin": 0.0,
             "rmax": p.rmax, "rstep": p.rstep, "mode": "xray"}
        write_gr(out / f"{it.name}.gr", calc.r, g, header, title="cbldm-data offrecipe")
        atoms = Atoms(f"{it.element}{it.n_atoms}", positions=it.xyz)
        atomic_write(out / f"{it.name}.xyz", lambda f: ase.io.write(f, atoms, format="xyz"))
        index.append({"name": it.name, "group": it.group, "family": it.family, "motif": it.motif,
                      "element": it.element, "n_atoms": it.n_atoms, "physics": p.as_dict(),
                      "noise": it.noise, **it.notes})
    doc = {"format": FORMAT, "seed": seed, "n": len(index), "bare": bare,
           "groups": {g: sum(1 for i in index if i["group"] == g) for g in dict.fromkeys(i["group"] for i in index)},
           "items": index}
    atomic_write_text(out / "index.json", json.dumps(doc, indent=1))
    log(f"{out}: {len(index)} PDFs {doc['groups']}")
    return doc


def load_index(root: Path) -> dict:
    from cbldm.runtime.fileutil import read_json

    return read_json(Path(root) / "index.json", ValueError, "not an out-of-recipe set", FORMAT)
