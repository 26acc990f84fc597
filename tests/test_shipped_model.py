"""The model in models/default: loads, hashes match, and predicts held-out structures sensibly."""
import json
from pathlib import Path

import numpy as np
import pytest

from cbldm.runtime.backends import load_manifest, load_model

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "default"


def test_shipped_model_is_complete_and_small():
    m = load_manifest(MODEL, verify=True)  # raises on any hash mismatch
    total = sum(f.stat().st_size for f in MODEL.iterdir())
    assert total < 30e6
    assert m["model"]["preset"] == "edge" and len(m["data_manifest_sha256"]) == 64
    for name in ("training_config.json", "evaluation.json"):
        assert (MODEL / name).exists(), name


def _held_out_by_type():
    """One test-split structure per type (the first of each in the shipped evaluation), rebuilt
    by the recipe and simulated here; the model never trained on them."""
    from scipy.spatial.distance import pdist

    from cbldm.runtime.pdf import DebyePDF
    from cbldm.training.clusters import SHORT, TYPES, unit_shapes

    ev = json.loads((MODEL / "evaluation.json").read_text())
    held_out = {}
    for r in ev["results"]:
        held_out.setdefault(r["type"], r)
    assert len(held_out) == 7
    calc = DebyePDF()
    out = []
    for short, r in sorted(held_out.items()):
        kind = [t for t in TYPES if SHORT[t] == short][0]
        label, rest = r["name"].split("_atom_")
        lc = float(rest.split("_lc_")[1])
        shape = [s for s in unit_shapes(kind) if s.label() == label][0]
        xyz = shape.xyz_unit * lc
        out.append((short, shape.n_atoms, calc.calc(xyz, "Au"), float(pdist(xyz).min())))
    return out


@pytest.fixture(scope="module")
def shipped_predictions():
    from cbldm.runtime.pipeline import predict_batch
    from cbldm.runtime.sampling import SamplerConfig

    cases = _held_out_by_type()
    model = load_model(MODEL, backend="cpu")
    preds = predict_batch(model, np.array([c[2] for c in cases]),
                          SamplerConfig(**model.manifest["sampler"]), 4, ["Au"] * len(cases), seed=0)
    return [(short, n, p, d) for (short, n, _, d), p in zip(cases, preds)]


def test_shipped_model_counts_atoms_of_every_type(shipped_predictions):
    """Atom count within max(3, 15 %) of the truth for a held-out structure of every type."""
    for short, n_true, p, _ in shipped_predictions:
        assert abs(p.best.n_atoms - n_true) <= max(3, 0.15 * n_true), (short, n_true, p.best.n_atoms)


def test_shipped_model_fits_most_types_with_physical_structures(shipped_predictions):
    """The shipped pipeline (skip-step sampling, recovery, refinement) fits the held-out PDF
    to Rwp < 0.5 for at least 5 of the 7 types, and every such fit is a physical structure
    (no two atoms closer than 0.85 of the true shortest bond)."""
    from scipy.spatial.distance import pdist

    good = [(short, p) for short, _, p, _ in shipped_predictions if p.best.rwp < 0.5]
    assert len(good) >= 5, [(s, round(p.best.rwp, 3)) for s, _, p, _ in shipped_predictions]
    for short, _, p, d_true in shipped_predictions:
        if p.best.rwp < 0.5:
            assert pdist(p.best.xyz).min() > 0.85 * d_true, (short, pdist(p.best.xyz).min(), d_true)


@pytest.mark.xfail(strict=True, reason="not every type is fitted yet: the large decahedron (217 atoms) "
                   "and the 19-atom SC cluster of this set stay at Rwp ~0.97 (held-out total 0.25; issue 5)")
def test_shipped_model_fits_every_type(shipped_predictions):
    for short, _, p, _ in shipped_predictions:
        assert p.best.rwp < 0.5, (short, p.best.rwp)
