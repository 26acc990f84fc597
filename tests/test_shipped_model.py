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


@pytest.mark.xfail(strict=True, reason="the shipped edge model (46 min of 2-core CPU training) does not yet "
                   "recover structures reliably: held-out Rwp 0.81, 41 % atom counts (issue 5 stays open)")
def test_shipped_model_recovers_a_held_out_structure_of_each_type():
    """Structures built by the recipe but simulated here; the test split never trained the model."""
    from cbldm.runtime.pdf import DebyePDF
    from cbldm.runtime.pipeline import predict_batch
    from cbldm.runtime.sampling import SamplerConfig

    ev = json.loads((MODEL / "evaluation.json").read_text())
    held_out = {}
    for r in ev["results"]:  # one test-split structure per type, from the shipped evaluation
        held_out.setdefault(r["type"], r)
    assert len(held_out) == 7
    from cbldm.training.clusters import unit_shapes, TYPES, SHORT

    calc = DebyePDF()
    gs, truths = [], []
    for short, r in sorted(held_out.items()):
        kind = [t for t in TYPES if SHORT[t] == short][0]
        label, rest = r["name"].split("_atom_")
        lc = float(rest.split("_lc_")[1])
        shape = [s for s in unit_shapes(kind) if s.label() == label][0]
        gs.append(calc.calc(shape.xyz_unit * lc, "Au"))
        truths.append((short, shape.n_atoms))
    model = load_model(MODEL, backend="cpu")
    preds = predict_batch(model, np.array(gs), SamplerConfig(**model.manifest["sampler"]), 4,
                          ["Au"] * len(gs), seed=0)
    for (short, n_true), p in zip(truths, preds):
        assert abs(p.best.n_atoms - n_true) <= max(3, 0.15 * n_true), (short, n_true, p.best.n_atoms)
        assert p.best.rwp < 0.8, (short, p.best.rwp)
