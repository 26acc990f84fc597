"""The model in models/default: complete, and what it answers for shapes the networks never saw
and for the measured PDFs in ../shared."""
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
    assert total < 40e6
    assert m["model"]["preset"] == "edge" and len(m["data_manifest_sha256"]) == 64
    assert m["library"]["recipe_entries"] == 331 and m["library"]["largest_atoms"] > 2000
    ev = json.loads((MODEL / "evaluation.json").read_text())
    assert {"unseen", "offrecipe", "test_shapes"} <= set(ev)
    assert set(ev["unseen"]["sources"]) == {"library", "model", "both"}


def test_what_info_shows_is_the_evaluations_in_the_repository():
    """``cbldm-run info`` reads MODEL/evaluation.json: its totals are those of eval/ (regenerate
    with ``cbldm-eval summary`` after an evaluation; it had fallen a day behind, stop 32)."""
    ev = json.loads((MODEL / "evaluation.json").read_text())
    for key, path in (("unseen", "unseen/accuracy.json"), ("offrecipe", "offrecipe/offrecipe.json"),
                      ("offrecipe_2", "offrecipe-s7/offrecipe.json"),
                      ("families", "families/offrecipe.json"), ("families_b", "families-b/offrecipe.json")):
        run = json.loads((REPO / "eval" / path).read_text())
        assert {s: t["table"]["total"] for s, t in run["sources"].items()} == \
            {s: t["total"] for s, t in ev[key]["sources"].items()}, key


def _unseen_by_type():
    """One test-split shape per type (shapes the networks never saw), rebuilt by the recipe and
    simulated here at a bond length of the recipe."""
    from cbldm.runtime.pdf import DebyePDF
    from cbldm.runtime.pipeline import PDFInput
    from cbldm.training.clusters import TYPES, unit_shapes

    test = json.loads((MODEL / "evaluation.json").read_text())["test_shapes"]
    calc = DebyePDF()
    out = []
    for kind in TYPES:
        shape = next(s for s in unit_shapes(kind) if s.label() in test)
        xyz = shape.xyz_unit * 2.77
        out.append((kind, shape.n_atoms, PDFInput.on_model_grid(calc.calc(xyz, "Au"), "Au", name=shape.label())))
    return out


@pytest.fixture(scope="module")
def shipped():
    return load_model(MODEL, backend="cpu")


@pytest.fixture(scope="module")
def unseen_predictions(shipped):
    from cbldm.runtime.pipeline import predict_batch
    from cbldm.runtime.sampling import SamplerConfig

    cases = _unseen_by_type()
    sampler = SamplerConfig(**shipped.manifest["sampler"])
    both = predict_batch(shipped, [c[2] for c in cases], sampler, 4, seed=0, library=shipped.library)
    model = predict_batch(shipped, [c[2] for c in cases], sampler, 4, seed=0, source="model")
    return [(kind, n, b, m) for (kind, n, _), b, m in zip(cases, both, model)]


def test_default_pipeline_answers_every_unseen_type_exactly(unseen_predictions):
    """The library holds every recipe shape: with it the default pipeline is exact and says so."""
    for kind, n, p, _ in unseen_predictions:
        assert p.best.n_atoms == n and p.best.rwp < 0.05 and p.verdict.verdict == "ok", \
            (kind, n, p.best.n_atoms, p.best.rwp, p.verdict.warnings)


def test_networks_alone_get_the_size_of_unseen_shapes_roughly(unseen_predictions):
    """What the networks do manage on shapes they never saw: the size, within 15 % or 3 atoms,
    for most types (measured: 6 of 7)."""
    close = [abs(m.best.n_atoms - n) <= max(3, 0.15 * n) for _, n, _, m in unseen_predictions]
    assert sum(close) >= 5, [(k, n, m.best.n_atoms) for k, n, _, m in unseen_predictions]


@pytest.mark.xfail(strict=True, reason="the networks alone do not generalise to unseen shapes yet "
                                       "(2 % exact counts on the test split; README, 'How good')")
def test_networks_alone_count_atoms_of_unseen_shapes_exactly(unseen_predictions):
    exact = [m.best.n_atoms == n for _, n, _, m in unseen_predictions]
    assert sum(exact) >= 4, exact      # the bar: 60 %


MEASURED = REPO.parent / "shared" / "reference" / "deepstruc" / "experimental"


@pytest.mark.skipif(not MEASURED.is_dir(), reason="../shared/reference/deepstruc/experimental not present")
@pytest.mark.parametrize("name,bar", [("Au144pMBA", 0.143), ("JQ_S1", 0.271)])
def test_measured_pdfs_get_physical_answers_with_the_files_physics(shipped, name, bar):
    """Issue 11's bar: below what a search over the recipe shapes with the training physics
    and free refinement reached, physical, with the refined physics reported. The bar was set
    by refined fits; the answer may be a rigid one where refining its coordinates does not pay
    for them (pipeline.criterion: Au144's ~160 independent points cannot carry 85 atoms'
    coordinates), so the bar holds for the best fit the pipeline reached, refined or not."""
    from cbldm.runtime.pipeline import predict
    from cbldm.runtime.results import read_input
    from cbldm.runtime.sampling import SamplerConfig

    _, pdf = read_input(MEASURED / f"{name}.gr")
    assert pdf.physics.source["qmax"] == "file header"
    p = predict(shipped, pdf, SamplerConfig(**shipped.manifest["sampler"]), 4, library=shipped.library)
    b = p.best
    reached = min(b.rwp, b.rwp_refined_unjustified or 1.0)
    assert reached < bar and b.detached == 0 and b.min_pair > 0.85 * p.d_nn, (b.rwp, reached, b.detached, b.min_pair)
    # and the answer as reported is not far from it (Au144: 0.164, ranked above a 105-atom fit at
    # 0.151 that needs Qdamp at its bound, pipeline.overdamped; the verdict names that fit)
    assert b.rwp < 1.2 * bar
    assert p.physics.rmax == pytest.approx(float(pdf.r[-1]))   # the file's own range, no padding
    assert 0 < b.fit.biso < 3 and b.fit.scale > 0 and p.verdict.verdict in ("ok", "doubtful")
    assert np.isfinite(b.fit.qdamp) and np.isfinite(b.fit.delta2)


@pytest.mark.skipif(not MEASURED.is_dir(), reason="../shared/reference/deepstruc/experimental not present")
def test_measured_pt_is_not_grown_to_the_library_end_by_qdamp(shipped):
    """Measured Pt (JQ_S1, Qdamp not stated): the walk along the truncated octahedra fits each
    thicker one a little better with a larger Qdamp, up to the thickest of the truncation the
    library holds (2652 atoms, 49 A across, for a signal seen to 33 A). That is the size
    trading against Qdamp, not the data fixing it: the answer stays where the search put it,
    and the verdict names the grown member and asks for --qdamp."""
    from cbldm.runtime.pipeline import predict
    from cbldm.runtime.results import read_input
    from cbldm.runtime.sampling import SamplerConfig

    _, pdf = read_input(MEASURED / "JQ_S1.gr")
    p = predict(shipped, pdf, SamplerConfig(**shipped.manifest["sampler"]), 4, source="library",
                library=shipped.library)
    grown = p.candidates[-1]
    assert grown.set_aside and grown.via == "walk" and grown.n_atoms > p.best.n_atoms, (grown.label, grown.set_aside)
    assert p.best.n_atoms < 1.5 * p.extent["compact_atoms_estimate"], (p.best.n_atoms, p.best.label)
    assert grown.rwp < p.best.rwp and grown.fit.qdamp > p.best.fit.qdamp and p.verdict.verdict == "doubtful"
    assert any(f"{grown.n_atoms} atoms fit better" in w and "--qdamp" in w for w in p.verdict.warnings), \
        p.verdict.warnings
    assert sum(c.set_aside is not None for c in p.candidates) == 1


def test_a_file_without_its_q_range_is_fitted_with_the_data_s_own(shipped, tmp_path):
    """A bare two-column PDF (no header) made with Qmin 1.1 and Qmax 21 (not the training 0.7 and
    25): Qmax is read off the data's band edge, Qmin fitted with the best first candidate, and the
    fit reaches the calculator's level, so the verdict does not doubt a Q range it confirmed. With
    the training values assumed it fits 0.02-0.1 and is doubtful."""
    from cbldm.runtime.mtp import build
    from cbldm.runtime.pdf import DebyePDF, PDFParams
    from cbldm.runtime.pipeline import NO_REFINEMENT, predict
    from cbldm.runtime.results import read_input
    from cbldm.runtime.sampling import SamplerConfig
    from cbldm.runtime.structure import nn_length

    x = build("decahedron_p3_q2_r1")
    x = x / nn_length(x) * 2.77
    calc = DebyePDF(PDFParams(rmax=30.01, qmin=1.1, qmax=21.0, biso=0.3))
    g = calc.calc(x, "Pt")
    f = tmp_path / "bare.gr"
    np.savetxt(f, np.column_stack([calc.r, g]))
    _, pdf = read_input(f, "Pt")
    assert pdf.physics.source["qmax"].startswith("the data's band edge")
    assert DebyePDF(PDFParams(rmax=30.01, qmax=pdf.physics.qmax, biso=0.3)).nq == calc.nq
    sampler = SamplerConfig(**shipped.manifest["sampler"])
    p = predict(shipped, pdf, sampler, 0, source="library", library=shipped.library, refine=NO_REFINEMENT)
    assert p.physics.source["qmin"].startswith("fitted") and p.physics.origin == {"qmin": "fitted", "qmax": "band_edge"}
    assert DebyePDF(PDFParams(rmax=30.01, qmin=p.physics.qmin, qmax=21.0, biso=0.3)).nqmin == calc.nqmin
    assert p.best.n_atoms == len(x) and p.best.rwp < 1e-3, (p.best.n_atoms, p.best.rwp)
    assert p.verdict.verdict == "ok", p.verdict.warnings
    _, assumed = read_input(f, "Pt", qmin=0.7, qmax=25.0)
    q = predict(shipped, assumed, sampler, 0, source="library", library=shipped.library, refine=NO_REFINEMENT)
    assert q.best.rwp > 0.01
