"""Cluster recipe, canonical order and the generated dataset."""
import json
from collections import Counter

import numpy as np
import pytest
from conftest import reference_graphs

from cbldm.runtime.pdf import DebyePDF
from cbldm.training.clusters import (TYPES, canonical_order, enumerate_clusters, sorted_distances,
                                     unit_shapes)
from cbldm.training.dataset import generate, load_arrays, load_manifest, sha256_file

KIND_OF = {"FCC": "FCC", "BCC": "BCC", "SC": "SC", "HCP": "HCP", "Icosahedron": "Icosahedron",
           "Decahedron": "Decahedron", "Octahedron": "Octahedron"}


def test_builders_reproduce_the_reference_structures(reference):
    """Each DeepStruc reference file is one of our shapes at its lattice constant."""
    for name, xyz, _, lc, _ in reference_graphs(reference):
        kind = name.split("_")[1]
        params = name.split("_atom_")[0].split("_")[2:]
        want = dict(zip(params[::2], map(int, params[1::2])))
        shape = [s for s in unit_shapes(kind) if dict(s.params) == want]
        assert len(shape) == 1, name
        ours = shape[0].xyz_unit * lc
        assert len(ours) == len(xyz), name
        # the reference xyz were written with 4 decimals
        np.testing.assert_allclose(sorted_distances(ours), sorted_distances(xyz), atol=2e-4)


def test_full_recipe_counts():
    clusters, stats = enumerate_clusters(workers=2)
    counts = Counter(c.kind for c in clusters)
    assert 12_000 <= len(clusters) <= 13_500  # paper: 13,210; METHOD.md: 12.6-13.4k
    assert set(counts) == set(TYPES)
    assert counts["HCP"] / len(clusters) == pytest.approx(0.55, abs=0.05)
    assert stats["distinct_lattice_constants"] == 38  # 19 radii x (0.99, 1.01)
    assert all(5 <= c.n_atoms <= 256 for c in clusters)


def test_canonical_order_is_radial_and_deterministic(rng):
    x = unit_shapes("Icosahedron")[1].xyz_unit * 2.8  # 55 atoms
    a = canonical_order(x[rng.permutation(len(x))])
    np.testing.assert_allclose(a, canonical_order(x), atol=1e-12)
    radii = np.linalg.norm(a, axis=1)
    assert np.all(np.diff(np.round(radii, 3)) >= 0)
    assert radii[0] < 1e-9  # the central atom comes first


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    generate(out, limit=21, workers=1, seed=3)
    return out


def test_dataset_shards_manifest_and_splits(small_dataset):
    m = load_manifest(small_dataset)
    assert m["n_structures"] == 21
    assert m["counts_per_type"] == {t: 3 for t in TYPES}
    # three shapes per type: the smallest and largest train, the middle one is the test shape
    assert all(v == {"train": 2, "val": 0, "test": 1}[k] for k, d in m["split_counts_per_type"].items() for v in d.values())
    all_idx = sorted(sum(m["splits"].values(), []))
    assert all_idx == list(range(21))
    for entry in m["shard_files"]:
        assert sha256_file(small_dataset / entry["file"]) == entry["sha256"]
    arr = load_arrays(small_dataset, verify=True)
    calc = DebyePDF()
    for i in (0, 10, 20):
        n = arr.n_atoms[i]
        assert np.all(arr.xyz[i, n:] == 0)
        g = calc.calc(arr.xyz[i, :n].astype(float), arr.element[i].decode())
        np.testing.assert_allclose(arr.pdf[i], g, atol=2e-6 * np.abs(g).max())
    test = load_arrays(small_dataset, split="test")
    assert sorted(test.type.tolist()) == list(range(7))
    train = load_arrays(small_dataset, split="train")
    for t in range(7):
        sizes = arr.n_atoms[arr.type == t]
        assert set(train.n_atoms[train.type == t].tolist()) == {sizes.min(), sizes.max()}


def test_split_is_shape_disjoint():
    """Every bond length of a shape lands in one split; a type with >= 4 shapes also validates."""
    from cbldm.training.dataset import split_indices

    rng = np.random.default_rng(0)
    shapes = np.repeat([f"s{i}" for i in range(30)], 5)           # 30 shapes x 5 bond lengths
    types = np.repeat(np.arange(30) % 2, 5)
    n_atoms = np.repeat(rng.permutation(30) + 10, 5)
    sp = split_indices(types, shapes, n_atoms, seed=1)
    where = {}
    for split, idx in sp.items():
        for i in idx:
            where.setdefault(shapes[i], set()).add(split)
    assert all(len(v) == 1 for v in where.values())
    assert sorted(sum(sp.values(), [])) == list(range(150))
    for t in (0, 1):
        held = {shapes[i] for s in ("val", "test") for i in sp[s] if types[i] == t}
        assert len(held) == 4   # 10 % of 15 shapes is 1.5: two to test, two to validation
        sizes = n_atoms[types == t]
        assert not any(n_atoms[i] in (sizes.min(), sizes.max()) for s in ("val", "test") for i in sp[s])


def test_dataset_resume_is_deterministic(small_dataset, tmp_path):
    m = load_manifest(small_dataset)
    shard = small_dataset / m["shards"][0]
    before = sha256_file(shard)
    shard.unlink()
    res = generate(small_dataset, limit=21, workers=1, seed=3)
    assert res.written_shards == 1 and sha256_file(shard) == before
    res = generate(small_dataset, limit=21, workers=1, seed=3)
    assert res.written_shards == 0 and res.skipped_shards == 1
    assert json.loads((small_dataset / "manifest.json").read_text())["splits"] == m["splits"]


def test_dataset_refuses_other_settings(small_dataset):
    from cbldm.training.dataset import DatasetError

    with pytest.raises(DatasetError, match="different settings"):
        generate(small_dataset, limit=22, workers=1)


def test_the_motif_of_thin_recipe_shapes_is_read_from_their_pair_distances():
    """Common-neighbour analysis finds no motif in the recipe's hcp prisms one or two atoms
    thick ('amorphous/unclear', or 'sc' for a zigzag row); their pair distances sit on hcp's
    shells. Simple cubic stays simple cubic, a single-column decahedron is a chain, and a
    disordered cluster stays unclear."""
    from cbldm.runtime.structure import _shell_lattice, cna, motif

    def shape(kind, **params):
        return next(s for s in unit_shapes(kind) if dict(s.params) == params).xyz_unit

    for p in ({"Size1": 1, "Size2": 2, "Size3": 9}, {"Size1": 1, "Size2": 5, "Size3": 15},
              {"Size1": 1, "Size2": 1, "Size3": 8}):
        x = shape("HCP", **p)
        sig, _ = cna(x)
        assert sig[(4, 2, 1)] + sig[(4, 2, 2)] < 0.1 * sum(sig.values()), p   # CNA alone: no motif
        assert motif(x)["motif"] == "hcp", p
    assert motif(shape("SC", h=3, k=3, l=4))["motif"] == "sc"
    assert motif(shape("BCC", h=1, k=1, l=3))["motif"] == "bcc"
    assert motif(shape("Decahedron", p=1, q=6, r=0))["motif"] == "chain"
    assert motif(shape("Decahedron", p=2, q=1, r=0))["motif"] == "decahedral"   # one five-fold bond
    glass = np.random.default_rng(0).uniform(0, 4, (60, 3))
    assert _shell_lattice(glass) is None and motif(glass)["motif"] == "amorphous/unclear"
