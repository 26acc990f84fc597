"""Evaluation: the structure metrics, and cbldm-eval end to end on a tiny run."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cbldm.training.evaluate import assigned_rmsd, criteria, pair_distance_error
from cbldm.training.library_build import hcp_like_layers


def run(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _cluster(n=55):
    from cbldm.training.clusters import unit_shapes

    return next(s for s in unit_shapes("Icosahedron") if s.n_atoms >= n).xyz_unit * 2.8


def test_pair_distance_error_is_the_sorted_difference_and_scores_any_count():
    from scipy.spatial.distance import pdist

    x = _cluster()
    y = x + np.random.default_rng(0).normal(0, 0.05, x.shape)
    assert pair_distance_error(x, y) == pytest.approx(np.mean(np.abs(np.sort(pdist(x)) - np.sort(pdist(y)))))
    assert pair_distance_error(x, x[np.random.default_rng(1).permutation(len(x))]) == pytest.approx(0, abs=1e-12)
    # a missing atom is an error, and a larger one than a slightly moved copy
    assert pair_distance_error(x[:-1], x) > 0
    assert pair_distance_error(x * 1.05, x) > pair_distance_error(x[:-1], x) > 0


def test_assigned_rmsd_finds_the_matching_whatever_the_order_rotation_or_mirror():
    from scipy.spatial.transform import Rotation

    x = _cluster()
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    y = (x[np.random.default_rng(2).permutation(len(x))] @ rot.T) * np.array([-1, 1, 1]) + 3.0
    assert assigned_rmsd(y, x) < 1e-6
    noise = np.random.default_rng(3).normal(0, 0.1, x.shape)
    centred = noise - noise.mean(0)
    # superposition can only absorb a little of random noise
    assert assigned_rmsd(x + noise, x) == pytest.approx(np.sqrt(np.mean(np.sum(centred**2, 1))), rel=0.05)
    assert np.isnan(assigned_rmsd(x[:-1], x))


def test_ranking_criteria_count_what_each_would_pick():
    cand = [{"n_atoms": 10, "rwp": 0.10, "rwp_rigid": 0.30}, {"n_atoms": 12, "rwp": 0.20, "rwp_rigid": 0.25}]
    rows = [{"n_atoms_true": 12, "candidates": cand}]
    free = [{"n_atoms_true": 12, "candidates": [dict(cand[0], rwp=0.05), cand[1]]}]
    out = criteria(rows, free)
    assert out["rigid physics fit"]["exact_count"] == 1.0
    assert out["restrained refinement"]["exact_count"] == 0.0
    assert out["free refinement"]["exact_count"] == 0.0


@pytest.mark.slow
def test_accuracy_library_model_and_both(tiny_run, tiny_dataset, tmp_path):
    pytest.importorskip("torch")
    res = run("cbldm.training.cli_eval", "accuracy", "--model", tiny_run, "--data", tiny_dataset,
              "--split", "train", "--per-type", "1", "-k", "1", "--refine", "0", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(doc["sources"]) == {"library", "model", "both"} and doc["what"].startswith("seen shapes")
    for src in doc["sources"].values():
        assert src["table"]["total"]["n"] == 7 and len(src["results"]) == 7
    # every recipe shape is in the library: on recipe PDFs it is exact
    lib = doc["sources"]["library"]["table"]["total"]
    assert lib["exact_count"] == 1.0 and lib["pair_distance_error_A"] < 0.01
    row = doc["sources"]["both"]["results"][0]
    assert {"rmsd_A", "pair_distance_error_A", "count_error", "verdict", "answer_source", "motif_pred"} <= set(row)
    md = (tmp_path / "accuracy.md").read_text()
    assert "| total | 7 |" in md
    # how far "ok" can be trusted: of the answers given it, how many are exact
    ok = [r for r in doc["sources"]["both"]["results"] if r["verdict"] == "ok"]
    total = next(line for line in md.splitlines() if line.startswith("| total |"))
    assert "both: 'ok' exact / given" in md and f"| {sum(bool(r['exact_count']) for r in ok)} / {len(ok)} |" in total
    bad = run("cbldm.training.cli_eval", "accuracy", "--model", tiny_run, "--data", tiny_dataset,
              "--sources", "library,oracle", "--out", tmp_path)
    assert bad.returncode == 2 and "--sources" in bad.stderr
    # the tables shipped beside a model: what `cbldm-run info` then shows
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    acc = tmp_path / "accuracy.json"
    res = run("cbldm.training.cli_eval", "summary", "--model", model, "--data", tiny_dataset,
              "--unseen", acc, "--offrecipe", acc, "--offrecipe-2", acc)
    assert res.returncode == 0, res.stderr
    shipped = json.loads((model / "evaluation.json").read_text())
    assert shipped["unseen"]["sources"]["library"]["total"]["exact_count"] == 1.0 and shipped["test_shapes"]
    assert shipped["offrecipe_2"] == shipped["offrecipe"]
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe not json")
    res = run("cbldm.training.cli_eval", "summary", "--model", model, "--data", tiny_dataset,
              "--unseen", tmp_path / "junk.json", "--offrecipe", acc)
    assert res.returncode == 1 and "junk.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_offrecipe_set_is_written_and_evaluated(tiny_dataset, tiny_model, tmp_path):
    res = run("cbldm.training.cli_data", "offrecipe", "--data", tiny_dataset, "--out", tmp_path / "set")
    assert res.returncode == 0, res.stderr
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    groups = {i["group"] for i in index["items"]}
    assert groups == {"unseen-family", "perturbed", "physics", "large"}
    # the files carry what a reduction program writes, not the physics they were made with
    head = (tmp_path / "set" / f"{index['items'][0]['name']}.gr").read_text().split("#### start data")[0]
    assert "qmax" in head and "biso" not in head and "qdamp" not in head
    res = run("cbldm.training.cli_eval", "offrecipe", "--model", tiny_model, "--set", tmp_path / "set",
              "--groups", "unseen-family", "--sources", "library", "--refine", "0", "--out", tmp_path / "ev")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "ev" / "offrecipe.json").read_text())
    tab = doc["sources"]["library"]["table"]
    assert tab["total"]["n"] == sum(i["group"] == "unseen-family" for i in index["items"])
    # shapes the library does not hold: it cannot be exact on all of them
    assert tab["total"]["exact_count"] < 1.0


def test_heldout_families_are_in_neither_the_library_nor_the_training_pool(tmp_path):
    """The held-out families exist to test what the library cannot look up: no shape of the set
    may be a shipped library entry or a training-pool structure, and the set is deterministic."""
    from cbldm.models import default_model_dir
    from cbldm.runtime.library import Library
    from cbldm.training.heldout import GROUPS, build, keys
    from cbldm.training.offrecipe import excluded_keys
    from cbldm.training.variants import shape_key

    held = keys()
    assert len(held) == 16 and held == keys() and held <= excluded_keys()
    lib = Library(default_model_dir() / "library.npz")
    lib_keys = {shape_key(lib.xyz(i)) for i in np.flatnonzero(lib.n_atoms <= 256)}
    assert not held & lib_keys
    items = build()
    assert [sum(it.group == g for it in items) for g in GROUPS] == [16, 16, 4]
    assert {shape_key(it.xyz) for it in items if it.group == "families"} == held
    # any seed builds the set (a centre offset that misses the size range is redrawn)
    assert len(build(seed=20)) == 36
    assert {it.family for it in items} == {"supported", "lamellar-twin", "rod", "hex-prism"}
    # each family is what it says (common-neighbour analysis): twin planes, a long rod, hcp
    from cbldm.runtime.structure import motif

    for twin in (it for it in items if it.family == "lamellar-twin"):
        # two twin planes inside: close-packed layers whose neighbours on both sides share a letter
        assert hcp_like_layers(twin.xyz) == 2, twin.name
        if twin.n_atoms > 100:
            assert motif(twin.xyz)["motif"] == "fcc with twin/stacking faults"

    rod = next(it for it in items if it.family == "rod" and it.n_atoms > 100)
    spread = np.sqrt(np.linalg.eigvalsh(np.cov(rod.xyz.T)))   # along the principal axes
    assert spread[2] > 1.5 * spread[1]
    prism = next(it for it in items if it.family == "hex-prism" and it.group == "families" and it.n_atoms > 100)
    assert motif(prism.xyz)["motif"] == "hcp"
    res = run("cbldm.training.cli_data", "families", "--out", tmp_path / "fam")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "fam" / "index.json").read_text())["n"] == 36


def test_second_heldout_families_set_is_held_out_and_built_as_described(tmp_path):
    """Set b (made when twinned spheres joined the library): none of its shapes is a library
    entry or a pool structure; platelets are thin, polytypes are neither fcc nor hcp, bipyramids
    and multiply twinned spheres have the twin planes they claim."""
    from cbldm.models import default_model_dir
    from cbldm.runtime.library import Library
    from cbldm.training.heldout_b import GROUPS, build, keys
    from cbldm.training.offrecipe import excluded_keys
    from cbldm.training.variants import shape_key

    held = keys()
    assert len(held) == 16 and held <= excluded_keys()
    lib = Library(default_model_dir() / "library.npz")
    assert not held & {shape_key(lib.xyz(i)) for i in np.flatnonzero(lib.n_atoms <= 256)}
    items = build()
    assert [sum(it.group == g for it in items) for g in GROUPS] == [16, 16, 4]
    assert {it.family for it in items} == {"plate", "polytype", "bipyramid", "multi-twin"}
    assert len(build(seed=40)) == 36
    from cbldm.runtime.structure import nn_length

    small = [it for it in items if it.group == GROUPS[0]]
    for it in small:
        layers = hcp_like_layers(it.xyz)
        if it.family == "multi-twin":
            assert layers == 3, it.name
        elif it.family == "bipyramid":
            assert layers == 1, it.name
            z = np.rint(it.xyz[:, 2] / (np.sqrt(2 / 3) * nn_length(it.xyz))).astype(int)
            sizes = [int(np.sum(z == k)) for k in range(z.min(), z.max() + 1)]
            if "_cut" not in it.name:   # {111} faces: triangles of 1, 3, 6, 10, ... atoms from each apex
                half = len(sizes) // 2
                tri = [(k + 1) * (k + 2) // 2 for k in range(half)]
                assert sizes[:half] == tri and sizes[::-1][:half] == tri, (it.name, sizes)
        elif it.family == "plate":
            assert layers == ("_twin" in it.name), it.name
            assert np.ptp(it.xyz[:, 2]) < 0.6 * np.ptp(it.xyz[:, :2], axis=0).max(), it.name   # flat
        else:   # 4H: every second inner layer hcp-like, 6H every third (fcc: none, hcp: all)
            n_layers = len(np.unique(np.rint(it.xyz[:, 2] / (np.sqrt(2 / 3) * nn_length(it.xyz)))))
            assert abs(layers - (n_layers - 2) / (2 if "4H" in it.name else 3)) <= 1, it.name
    res = run("cbldm.training.cli_data", "families", "--set", "b", "--out", tmp_path / "famb")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "famb" / "index.json").read_text())["n"] == 36
    bad = run("cbldm.training.cli_data", "families", "--set", "c", "--out", tmp_path / "famc")
    assert bad.returncode != 0 and "--set must be a, b or large" in bad.stderr and not (tmp_path / "famc").exists()


def test_tables_of_large_particles_say_how_close_count_and_diameter_come():
    from cbldm.training.evaluate import summarise, table_markdown

    def row(n_pred, d_pred, pe=float("nan"), n_true=5000):
        return {"name": f"p{n_pred}", "group": "large-beyond", "n_atoms_true": n_true, "n_atoms_pred": n_pred,
                "exact_count": n_pred == n_true, "count_error": abs(n_pred - n_true), "pair_distance_error_A": pe,
                "rmsd_A": float("nan"), "rwp": 0.05, "rwp_before_refinement": 0.05, "answer_source": "library",
                "verdict": "doubtful", "size_true_A": 50.0, "size_pred_A": d_pred}

    rows = [row(5300, 52.0), row(2900, 40.0)]
    doc = {"sources": {"library": {"table": summarise(rows, ["large-beyond"]), "results": rows}}}
    t = doc["sources"]["library"]["table"]["total"]
    assert t["count_within_10pct"] == 0.5 and t["size_error_rel_median"] == pytest.approx(0.12)
    md = table_markdown(doc, ["large-beyond"])
    assert "library: N within 10 %" in md and "| 50 % | 12 % |" in md
    # a set of particles up to 1500 atoms (pair distances compared) keeps its columns, whatever its
    # refused rows lack
    rows = [row(1000, 50.0, 0.01, n_true=1000), row(0, 0.0, n_true=1000)]
    doc = {"sources": {"library": {"table": summarise(rows, ["large-beyond"]), "results": rows}}}
    assert "within 10 %" not in table_markdown(doc, ["large-beyond"])


def test_pair_distance_error_of_large_structures_is_the_histograms(monkeypatch):
    import cbldm.training.evaluate as ev

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)) * 10, rng.normal(size=(300, 3)) * 10.5
    exact = pair_distance_error(a, b)
    monkeypatch.setattr(ev, "PAIRS_LISTED", 100)
    assert ev.pair_distance_error(a, b) == pytest.approx(exact, abs=ev.PAIR_BIN)
    assert ev.pair_distance_error(a, a) == 0.0
