"""The simulated training set: unique clusters, their DiffPy-equivalent PDFs, HDF5 shards.

Layout of a dataset directory:
    plan.json          what is being generated (parameters, shard list); written first
    shard_00000.h5     xyz (n, 256, 3) f4 padded, canonical order; n_atoms i2; type i1
                       (index into TYPES); element S2; lc f4; name S; pdf (n, 3000) f4
                       (raw G(r) on r = 0.01 k); index i4 (position in the full list)
    manifest.json      everything in plan.json plus file hashes, counts, splits, timing

Shards are written to a temporary name and renamed, so a shard that exists is complete;
a re-run skips them. Content does not depend on the seed or the number of workers; the
seed only draws the train/val/test split (by shape, stratified by type: see ``split_indices``).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbldm.runtime.fileutil import atomic_write_text, read_json, sha256_file
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, PDFParams
from cbldm.training.clusters import (BOND_FACTORS, MAX_ATOMS, METALS, MIN_ATOMS, TYPES,
                                     Cluster, enumerate_clusters)

FORMAT = "cbldm-dataset/1"
PAD_ATOMS = 256
SHARD_SIZE = 512
SPLIT_FRACTIONS = {"train": 0.80, "val": 0.10, "test": 0.10}  # of the shapes of each type


class DatasetError(RuntimeError):
    pass


def stratified_subset(clusters: list[Cluster], limit: int) -> list[Cluster]:
    """``limit`` clusters spread over all types and, within a type, over the size range."""
    by_type: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        by_type.setdefault(c.kind, []).append(i)
    quota = {k: 0 for k in by_type}
    remaining = limit
    while remaining > 0 and any(quota[k] < len(v) for k, v in by_type.items()):
        for k, v in by_type.items():
            if remaining and quota[k] < len(v):
                quota[k] += 1
                remaining -= 1
    picked = []
    for k, idx in by_type.items():
        # order by size so evenly spaced picks cover small and large particles
        idx = sorted(idx, key=lambda i: (clusters[i].n_atoms, i))
        if quota[k]:
            pos = np.unique(np.linspace(0, len(idx) - 1, quota[k]).round().astype(int))
            picked += [idx[p] for p in pos]
    return [clusters[i] for i in sorted(picked)]


def shape_of(name: str) -> str:
    """The shape a structure was cut as: its name without element and lattice constant (the
    recipe names each distinct geometry by the first label that builds it)."""
    return name.split("_atom_")[0]


def split_indices(types: np.ndarray, shapes: np.ndarray, n_atoms: np.ndarray, seed: int,
                  fractions=SPLIT_FRACTIONS) -> dict[str, list[int]]:
    """Shape-disjoint split, stratified by type: every bond length and element of a shape lands
    in one split, so validation and test shapes are ones the networks never see (the networks
    work in a scale-normalised frame, where a shape's 38 bond lengths are one input).

    Per type the shapes are shuffled with ``seed``; the smallest and the largest shape of each
    type always train (held-out shapes lie inside the sizes the model learns, so the test
    measures generalisation between shapes, not extrapolation beyond the recipe's sizes).
    A type with 3 or more shapes gives at least one to test, with 4 or more one to validation.
    """
    rng = np.random.default_rng(seed)
    out = {name: [] for name in fractions}
    for t in np.unique(types):
        idx = np.flatnonzero(types == t)
        names = sorted(set(shapes[idx].tolist()), key=lambda s: (int(n_atoms[idx][shapes[idx] == s][0]), s))
        inner = names[1:-1]
        rng.shuffle(inner)
        k = len(names)
        n_test = max(1, round(k * fractions["test"])) if k >= 3 else 0
        n_val = max(1, round(k * fractions["val"])) if k >= 4 else 0
        n_test, n_val = min(n_test, len(inner)), min(n_val, max(0, len(inner) - n_test))
        role = {s: "train" for s in names}
        role.update({s: "test" for s in inner[:n_test]})
        role.update({s: "val" for s in inner[n_test:n_test + n_val]})
        for i in idx:
            out[role[shapes[i]]].append(int(i))
    return {k: sorted(v) for k, v in out.items()}


def _write_shard(path: Path, items: list[tuple[int, Cluster]], params: PDFParams) -> None:
    import h5py

    calc = DebyePDF(params)
    n = len(items)
    xyz = np.zeros((n, PAD_ATOMS, 3), np.float32)
    pdf = np.zeros((n, len(calc.r)), np.float32)
    for j, (_, c) in enumerate(items):
        xyz[j, : c.n_atoms] = c.xyz
        pdf[j] = calc.calc(c.xyz, c.element)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w", track_order=False) as h:
        kw = dict(track_times=False)
        h.create_dataset("xyz", data=xyz, compression="gzip", compression_opts=4, shuffle=True, **kw)
        h.create_dataset("pdf", data=pdf, compression="gzip", compression_opts=4, shuffle=True, **kw)
        h.create_dataset("n_atoms", data=np.array([c.n_atoms for _, c in items], np.int16), **kw)
        h.create_dataset("type", data=np.array([TYPES.index(c.kind) for _, c in items], np.int8), **kw)
        h.create_dataset("element", data=np.array([c.element for _, c in items], "S2"), **kw)
        h.create_dataset("lc", data=np.array([c.lc for _, c in items], np.float32), **kw)
        h.create_dataset("name", data=np.array([c.name for _, c in items], "S64"), **kw)
        h.create_dataset("index", data=np.array([i for i, _ in items], np.int32), **kw)
    os.replace(tmp, path)


def _shard_job(args):
    path, items, params = args
    t = time.perf_counter()
    _write_shard(Path(path), items, params)
    return path, len(items), time.perf_counter() - t


@dataclass
class GenerateResult:
    manifest: dict
    skipped_shards: int
    written_shards: int


def generate(out: Path, limit: int | None = None, workers: int = 1, seed: int = 0,
             params: PDFParams = DEEPSTRUC_PARAMS, shard_size: int = SHARD_SIZE,
             progress=None) -> GenerateResult:
    """Build (or finish building) the dataset in ``out``. ``progress(done, total)`` is optional."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    clusters, stats = enumerate_clusters(workers=workers)
    counts_full = Counter(c.kind for c in clusters)
    if limit is not None:
        clusters = stratified_subset(clusters, limit)
    n = len(clusters)
    shards = [f"shard_{i:05d}.h5" for i in range(math.ceil(n / shard_size))]
    plan = {
        "format": FORMAT,
        "pdf_params": params.as_dict(),
        "r_grid": {"start": 0.0, "step": params.rstep, "points": int(len(DebyePDF(params).r))},
        "recipe": {"types": TYPES, "metals": METALS, "bond_factors": list(BOND_FACTORS),
                   "min_atoms": MIN_ATOMS, "max_atoms": MAX_ATOMS, "pad_atoms": PAD_ATOMS,
                   "source": "DeepStruc gen_xyz.py recipe (see cbldm.training.clusters)"},
        "limit": limit,
        "n_structures": n,
        "shard_size": shard_size,
        "shards": shards,
    }
    plan_path = out / "plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old != plan:
            changed = sorted(k for k in plan if old.get(k) != plan.get(k))
            raise DatasetError(f"{out} holds a dataset made with different settings "
                               f"({', '.join(changed)}); use another --out")
    else:
        _atomic_json(plan_path, plan)

    items = list(enumerate(clusters))
    jobs = []
    for s, name in enumerate(shards):
        if not (out / name).exists():
            lo = s * shard_size
            jobs.append((str(out / name), items[lo:lo + shard_size], params))
    skipped = len(shards) - len(jobs)
    done = skipped * shard_size
    if progress:
        progress(min(done, n), n)
    if jobs:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for _, k, _ in pool.imap_unordered(_shard_job, jobs):
                    done += k
                    if progress:
                        progress(min(done, n), n)
        else:
            for job in jobs:
                _, k, _ = _shard_job(job)
                done += k
                if progress:
                    progress(min(done, n), n)

    types = np.array([TYPES.index(c.kind) for c in clusters])
    shapes = np.array([c.label for c in clusters])
    splits = split_indices(types, shapes, np.array([c.n_atoms for c in clusters]), seed)
    manifest = dict(plan)
    manifest.update({
        "created_by": "cbldm-data generate",
        "seed": seed,
        "counts_per_type": {k: int((types == i).sum()) for i, k in enumerate(TYPES)},
        "full_recipe_counts_per_type": {k: counts_full.get(k, 0) for k in TYPES},
        "dedup": stats,
        "split_by": "shape",
        "split_fractions": SPLIT_FRACTIONS,
        "split_shapes": {k: sorted(set(shapes[v].tolist())) for k, v in splits.items() if k != "train"},
        "split_counts": {k: len(v) for k, v in splits.items()},
        "split_counts_per_type": {k: {t: int((types[v] == i).sum()) for i, t in enumerate(TYPES)}
                                  for k, v in splits.items()},
        "splits": splits,
        "shard_files": [{"file": s, "sha256": sha256_file(out / s)} for s in shards],
        "canonical_order": "centroid-centred; sorted by radius, then z, y, x (1e-3 A)",
        "workers": workers,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    })
    _atomic_json(out / "manifest.json", manifest)
    return GenerateResult(manifest, skipped, len(jobs))


def _atomic_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def load_manifest(root: Path) -> dict:
    return read_json(Path(root) / "manifest.json", DatasetError,
                     "not a cbldm dataset, or generation unfinished", FORMAT)


@dataclass
class Arrays:
    xyz: np.ndarray
    n_atoms: np.ndarray
    type: np.ndarray
    element: np.ndarray
    lc: np.ndarray
    name: np.ndarray
    pdf: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, rows) -> "Arrays":
        return Arrays(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})


def load_arrays(root: Path, split: str | None = None, verify: bool = False) -> Arrays:
    """All shards in memory (the full set is ~160 MB as float32), optionally one split."""
    import h5py

    root = Path(root)
    manifest = load_manifest(root)
    parts: dict[str, list] = {k: [] for k in Arrays.__dataclass_fields__}
    for entry in manifest["shard_files"]:
        path = root / entry["file"]
        if verify and sha256_file(path) != entry["sha256"]:
            raise DatasetError(f"{path}: hash differs from manifest (file changed or corrupt)")
        with h5py.File(path, "r") as h:
            for k in parts:
                parts[k].append(h[k][()])
    arrays = Arrays(**{k: np.concatenate(v) for k, v in parts.items()})
    order = np.argsort(arrays.index)
    arrays = arrays.subset(order)
    if split is not None:
        if split not in manifest["splits"]:
            raise DatasetError(f"{root}: no split {split!r} (have {', '.join(manifest['splits'])})")
        arrays = arrays.subset(np.asarray(manifest["splits"][split], dtype=int))
    return arrays
