"""A structure decoder that can generalise: site occupancies on a lattice template (experimental).

Why: the shipped structure autoencoder writes atom *slots* (slot k = k-th atom by radius).
Which atom is k-th jumps when a shape changes a little, so an MLP over slots memorises the
training shapes and fails on unseen ones (6 A slot RMSE on validation shapes; docs/networks.md).
Metal particles are, almost always, pieces of a few site sets: the fcc, hcp, bcc and sc
lattices, and the Mackay-icosahedral and decahedral shells. Here a structure is (template,
occupancy of each site). Adding or removing an atom flips one output; an unseen shape is
an unseen *subset* of sites the network has seen occupied many times.

The same shape sits on a template in several ways (the template's point group: 48 cubic
operations, 12 for hcp, 20 for decahedra, 120 for icosahedra). The loss is the minimum over
the group of the occupancy cross-entropy, so the network may answer in any orientation and
is never pulled toward the average of equivalent ones.

Templates live in the unit-bond frame (nearest neighbour 1), centred on a site; a structure
is mapped onto one by placing the atom nearest its centroid on a site near the origin, then
matching (strained particles: per-axis scales fitted to the matched atoms, matched again).
Measured (CPU; the scored model: 35 min on 50k drawn structures): docs/networks.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cbldm.training.variants import lattice_points, nn_length

KINDS = ("fcc", "hcp", "bcc", "sc", "ico", "dec")
LATTICE_RADIUS = 10.0      # unit bonds: holds every drawn cubic cut of <= 256 atoms (measured)
HCP_C_RADIUS = 13.0        # hcp prisms and cuts run long along c (z): an ellipsoid, not a sphere
MATCH_TOL = 0.35           # unit bonds: thermal noise and 2 % strain at the edge stay inside
RECIPE_KIND = {"FCC": "fcc", "Octahedron": "fcc", "BCC": "bcc", "SC": "sc", "HCP": "hcp",
               "Icosahedron": "ico", "Decahedron": "dec"}


def kind_of(name: str) -> str:
    """Template of a training-pool entry, from its name (recipe label, cut_<lattice>_..., strip_...)."""
    if name.startswith("cut_"):
        return name.split("_")[1]
    if name.startswith("strip_"):
        return "ico" if "Icosahedron" in name else "dec"
    return RECIPE_KIND[name.split("_")[0]]


def _dedup(x: np.ndarray, tol: float = 0.12) -> np.ndarray:
    from scipy.spatial import cKDTree

    keep = np.ones(len(x), bool)
    for i, j in sorted(cKDTree(x).query_pairs(tol)):
        if keep[i] and keep[j]:
            keep[j] = False
    return x[keep]


def _shell_sites(kind: str) -> np.ndarray:
    """Every site of the recipe's icosahedra or decahedra up to 400 atoms, unit bond, centred
    (the builders centre them on the particle's symmetry centre)."""
    from cbldm.training.clusters import unit_shapes

    out = []
    for s in unit_shapes("Icosahedron" if kind == "ico" else "Decahedron", max_atoms=400):
        x = s.xyz_unit / nn_length(s.xyz_unit)
        out.append(x - x.mean(0))
    return _dedup(np.concatenate(out))


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ops(kind: str, sites: np.ndarray) -> list[np.ndarray]:
    """The template's point group about its origin site (orthogonal matrices)."""
    if kind in ("fcc", "bcc", "sc"):
        ops = []
        for p in itertools.permutations(range(3)):
            for s in itertools.product((1, -1), repeat=3):
                m = np.zeros((3, 3))
                m[range(3), p] = s
                ops.append(m)
        return ops
    if kind in ("hcp", "dec"):     # D3h about an hcp atom (a along x), D5h about the decahedron's axis (z)
        n = 3 if kind == "hcp" else 5
        return [np.diag([mx, 1.0, mz]) @ _rot_z(360.0 * k / n)
                for k in range(n) for mx in (1.0, -1.0) for mz in (1.0, -1.0)]
    # icosahedron: the rotations taking one bonded pair of first-shell vertices to any other, +- inversion
    r = np.linalg.norm(sites, axis=1)
    v = sites[(r > 0.5) & (r < 1.2)]

    def frame(p, q):
        e1 = p / np.linalg.norm(p)
        e2 = q - (q @ e1) * e1
        e2 /= np.linalg.norm(e2)
        return np.stack([e1, e2, np.cross(e1, e2)], 1)

    a = v[0]
    b = next(w for w in v if 0.9 < np.linalg.norm(a - w) < 1.2)
    ops = []
    for a2 in v:
        for b2 in v:
            if 0.9 < np.linalg.norm(a2 - b2) < 1.2:
                rot = frame(a2, b2) @ frame(a, b).T
                ops += [rot, -rot]
    return ops


@dataclass
class Template:
    kind: str
    sites: np.ndarray       # (S, 3), unit bond, origin on a site
    perms: np.ndarray       # (ops, S): site i goes to perms[o, i] under operation o

    def map(self, xyz: np.ndarray) -> tuple[np.ndarray, float]:
        """Occupied site indices of a structure (any translation, the template's orientation,
        any bond length), and the fraction of its atoms that found a site."""
        from scipy.spatial import cKDTree

        tree = cKDTree(self.sites)
        x = np.asarray(xyz, float) / nn_length(xyz)
        c = x.mean(0)
        near = np.argsort(np.linalg.norm(x - c, axis=1))[:4]
        if self.kind in ("ico", "dec"):
            centre = np.argsort(np.linalg.norm(self.sites, axis=1))[:20]
            shifts = [x[i] - self.sites[j] for i in near for j in centre]
        else:                # the atom nearest the centroid on one of the sites nearest its offset
            shifts = [x[near[0]] - s for s in self.sites[tree.query(x[near[0]] - c, k=4)[1]]]
        best = None
        for t in shifts:
            d, j = tree.query(x - t)
            ok = d < MATCH_TOL
            score = (int(ok.sum()), -float(np.linalg.norm((x - t).mean(0))))
            if best is None or score > best[0]:
                best = (score, t, j, ok)
        _, t, j, ok = best
        y = x - t
        for _ in range(2):   # strain: per-axis scales from the matched atoms, then match again
            s_ax = (y[ok] * self.sites[j[ok]]).sum(0) / np.maximum((y[ok] ** 2).sum(0), 1e-9)
            d, j = tree.query(y * s_ax)
            ok = d < MATCH_TOL
        occ = np.unique(j[ok])
        return occ, len(occ) / len(x)


@lru_cache(maxsize=None)
def template(kind: str) -> Template:
    from scipy.spatial import cKDTree

    if kind == "hcp":
        p = lattice_points("hcp", HCP_C_RADIUS)
        sites = p[((p / np.array([LATTICE_RADIUS, LATTICE_RADIUS, HCP_C_RADIUS])) ** 2).sum(1) <= 1 + 1e-9]
    elif kind in ("fcc", "bcc", "sc"):
        sites = lattice_points(kind, LATTICE_RADIUS)
    elif kind in ("ico", "dec"):
        sites = _shell_sites(kind)
    else:
        raise ValueError(f"unknown template {kind!r}")
    tree = cKDTree(sites)
    perms = []
    for rot in _ops(kind, sites):
        d, j = tree.query(sites @ rot.T)
        if np.any(d > 0.1):
            raise AssertionError(f"{kind}: an operation of its group maps a site off the template")
        perms.append(j)
    return Template(kind, sites, np.asarray(perms))


# -- the network ---------------------------------------------------------------------------

def site_net(hidden: int = 1024):
    """PDF (network input, 6 x 500) -> template logits and per-template site logits."""
    import torch
    from torch import nn

    sizes = [len(template(k).sites) for k in KINDS]

    class SiteNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, width = [], 3000
            for _ in range(3):
                layers += [nn.Linear(width, hidden), nn.GELU(), nn.LayerNorm(hidden)]
                width = hidden
            self.body = nn.Sequential(*layers)
            self.kind = nn.Linear(hidden, len(KINDS))
            self.occ = nn.ModuleList([nn.Linear(hidden, s) for s in sizes])

        def forward(self, x: torch.Tensor):
            f = self.body(x.flatten(1))
            return self.kind(f), f

    return SiteNet()


def site_loss(net, x, kind, occupied: list[np.ndarray]):
    """Template cross-entropy plus, per sample, the occupancy cross-entropy (per atom) under the
    best operation of its template's group."""
    import torch
    import torch.nn.functional as F

    logits, f = net(x)
    loss = F.cross_entropy(logits, kind)
    occ_loss = logits.new_zeros(())
    for ki, k in enumerate(KINDS):
        m = (kind == ki).nonzero().flatten()
        if len(m) == 0:
            continue
        lg = net.occ[ki](f[m])
        y = torch.zeros_like(lg)
        for a, i in enumerate(m.tolist()):
            y[a, torch.as_tensor(occupied[i], dtype=torch.long)] = 1.0
        perms = torch.as_tensor(template(k).perms, dtype=torch.long)
        lp = lg[:, perms]                                             # (b, ops, S)
        bce = F.binary_cross_entropy_with_logits(lp, y[:, None, :].expand_as(lp), reduction="none").sum(-1)
        occ_loss = occ_loss + (bce.min(1).values / y.sum(-1).clamp(min=1)).sum()
    return loss + occ_loss / len(kind), logits


def decode(net, x, counts: int = 0) -> list[list[tuple[str, np.ndarray]]]:
    """Per input, unit-bond structures: the likeliest template's sites in order of probability,
    as many as the probabilities sum to, and ``counts`` more and fewer on either side."""
    import torch

    with torch.no_grad():
        logits, f = net(x)
        out = []
        for i in range(len(x)):
            ki = int(logits[i].argmax())
            p = torch.sigmoid(net.occ[ki](f[i:i + 1]))[0]
            order = torch.argsort(p, descending=True).numpy()
            n0 = max(2, int(round(float(p.sum()))))
            sites = template(KINDS[ki]).sites
            out.append([(KINDS[ki], sites[order[:n]]) for n in range(max(2, n0 - counts), n0 + counts + 1)])
    return out


# -- data and training (what docs/networks.md measured) ----------------------------------------

def draw_site_data(pool, n: int, seed: int) -> dict:
    """``n`` perturbed structures drawn from the training pool (cbldm.training.variants), their
    clean PDFs on the model grid, template index and occupied sites (atoms that found no site,
    such as adatoms in an fcc particle's hcp hollows, are left out of the target)."""
    from cbldm.training.torchpdf import TorchPDF
    from cbldm.training.train import Data
    from cbldm.training.variants import PerturbConfig, draw_structures

    xs, choice = draw_structures(pool, n, seed, PerturbConfig())
    kind = np.array([KINDS.index(kind_of(pool.names[c])) for c in choice], np.int64)
    occupied = [template(KINDS[k]).map(x)[0] for k, x in zip(kind, xs)]
    g = Data.from_structures(xs, "train", TorchPDF()).pdf.numpy()      # as cbldm-train draws them
    return {"g": g, "kind": kind, "occupied": occupied}


def network_input(g: np.ndarray):
    """Raw G(r) on the model grid -> the networks' input, scaled at its own first peak."""
    import torch

    from cbldm.runtime.preprocess import model_input, nn_distance

    g = np.asarray(g, np.float64)
    d = nn_distance(g, strict=False)
    d = np.where(np.isfinite(d), d, 2.77)
    return torch.from_numpy(model_input(g, d)[0]).float()


def train(net, data: dict, minutes: float, lr: float = 1e-3, batch: int = 128, seed: int = 0, log=print):
    """AdamW, warm-up then cosine decay over the time budget; each batch augmented as in
    cbldm-train (Qmax, Qmin, Biso, Qdamp, r range, noise)."""
    import time

    import torch

    from cbldm.training.augment import AugmentConfig, PDFAugmenter

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    aug = PDFAugmenter(AugmentConfig())
    gen = torch.Generator().manual_seed(seed)
    g, kind, occ = data["g"], data["kind"], data["occupied"]
    t0, step, epoch = time.perf_counter(), 0, 0
    while True:
        perm = np.random.default_rng(seed + epoch).permutation(len(g))
        epoch += 1
        for lo in range(0, len(g) - batch + 1, batch):
            frac = (time.perf_counter() - t0) / (minutes * 60)
            if frac >= 1:
                return step
            for pg in opt.param_groups:
                pg["lr"] = lr * min(1.0, step / 300) * 0.5 * (1 + math.cos(math.pi * frac))
            idx = perm[lo:lo + batch]
            x = network_input(aug(torch.from_numpy(g[idx]), gen).numpy())
            loss, logits = site_loss(net, x, torch.from_numpy(kind[idx]), [occ[i] for i in idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 200 == 0:
                log(f"epoch {epoch} step {step}: loss {loss.item():.3f}")


def pipeline_candidates(net, counts: int = 3):
    """A stand-in for ``cbldm.runtime.pipeline._model_candidates`` that answers with this
    network's structures, so the runtime fits, searches and refines them as it does the shipped
    networks' (how docs/networks.md scored it; not wired into the runtime or the export)."""
    from cbldm.runtime.pipeline import Candidate

    def candidates(nets, gm, d_nn, sampler, k, seed, schedule, t, timings):
        out = []
        for i, row in enumerate(decode(net, network_input(gm), counts)):
            out.append([Candidate(sites * d_nn[i], "model", f"sites {kind} {len(sites)}") for kind, sites in row])
        return out

    return candidates


def _pool_from_cache(data_root):
    """The training pool cbldm-train cached beside the data (validation/test shapes and the
    out-of-recipe set already excluded)."""
    from pathlib import Path

    from cbldm.training.variants import load_pool

    caches = sorted(Path(data_root).glob("pool-*.npz"), key=lambda p: p.stat().st_mtime)
    if not caches:
        raise SystemExit(f"error: no pool-*.npz in {data_root}: run cbldm-train on it once (it builds the pool)")
    return load_pool(caches[-1])


def main(argv=None) -> None:
    """python -m cbldm.training.sites --data DATA --out DIR [--draws N --minutes M]: draw, train,
    save (safetensors + config.json); what docs/networks.md reports."""
    import argparse
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(prog="python -m cbldm.training.sites")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=75.0)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    pool = _pool_from_cache(a.data)
    data = draw_site_data(pool, a.draws, seed=a.seed + 11)
    net = site_net(a.hidden)
    steps = train(net, data, a.minutes, seed=a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(a.out / "sites.safetensors"))
    (a.out / "config.json").write_text(json.dumps({"kinds": KINDS, "hidden": a.hidden, "draws": a.draws,
                                                   "minutes": a.minutes, "steps": steps, "seed": a.seed}, indent=1))


if __name__ == "__main__":
    main()
