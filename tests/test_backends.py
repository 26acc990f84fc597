"""What the runtime takes from a model: its physics, its precisions, its engines, and only
finite graph outputs."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbldm.runtime.backends import (GRAPH_NAMES, BackendUnavailable, GraphError, ModelError,
                                    check_engine_batch, load_manifest, load_model, select_engines)
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS
from cbldm.runtime.pipeline import NO_REFINEMENT, PDFInput, predict
from cbldm.runtime.sampling import SamplerConfig, Schedule

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "default"
SAMPLER = SamplerConfig(t1=999, t2=100, steps_before=0, steps_after=2)


def _example_g():
    from cbldm.runtime.pdfio import read_pdf

    d = read_pdf(REPO / "examples" / "Pt_decahedron_p3_q2_r1.gr")
    return PDFInput(d.r, d.g, "Pt")


def _model_copy(tmp_path, edit=None) -> Path:
    """The shipped model's manifest, edited, beside links to its graphs."""
    out = tmp_path / "m"
    out.mkdir()
    for f in SHIPPED.iterdir():
        if f.name != "manifest.json":
            (out / f.name).symlink_to(f)
    doc = json.loads((SHIPPED / "manifest.json").read_text())
    if edit:
        edit(doc)
    (out / "manifest.json").write_text(json.dumps(doc))
    return out


# -- the manifest's schedule and PDF parameters -------------------------------------------

def test_loaded_model_exposes_the_manifest_physics():
    m = load_model(SHIPPED, backend="cpu", warmup=False)
    assert m.schedule == Schedule() and m.pdf_params == DEEPSTRUC_PARAMS


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("schedule"), "manifest has no 'schedule'"),
    (lambda d: d.pop("pdf_params"), "manifest has no 'pdf_params'"),
    (lambda d: d["schedule"].update(kind="linear"), "schedule kind 'linear' is not implemented"),
    (lambda d: d["schedule"].update(T=500), r"a noise schedule this runtime does not apply: T 500 \(runtime 1000\)"),
    (lambda d: d["pdf_params"].pop("biso"), "PDF parameters lack biso"),
    (lambda d: d["pdf_params"].update(qbroad=0.02), "does not know: qbroad"),
    (lambda d: d["pdf_params"].update(qmax=20.0), r"PDF parameters this runtime does not apply: qmax 20.0 \(runtime 25.0\)"),
    (lambda d: d["pdf_params"].update(rstep=0.02), "not the model grid"),
    (lambda d: d["graphs"].pop("decoder"), "no fp32 graph for decoder"),
])
def test_manifest_the_runtime_cannot_honour_is_refused_in_one_line(tmp_path, edit, match):
    model = _model_copy(tmp_path, edit)
    with pytest.raises(ModelError, match=match) as exc:
        load_model(model, backend="cpu", warmup=False)
    assert "\n" not in str(exc.value) and str(model) in str(exc.value)
    with pytest.raises(ModelError, match=match):
        load_manifest(model, verify=False)


# -- non-finite graph outputs --------------------------------------------------------------

def test_fake_model_gives_the_decoded_structure(fake_model):
    """The control for the tests below: with finite outputs the fake graphs give an answer."""
    p = predict(fake_model(), _example_g(), SAMPLER, candidates=2, refine=NO_REFINEMENT, source="model")
    assert [c.n_atoms for c in p.candidates] == [51, 51]


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_a_graph_returning_nan_is_an_error_naming_it(fake_model, graph):
    def nan_like(*args):
        out = fake_model().graphs[graph](*args)
        if isinstance(out, tuple):  # the prior: a NaN log-variance
            return out[0], np.full_like(out[1], np.nan)
        out = out.copy()
        out.flat[3] = np.nan
        return out

    with pytest.raises(GraphError, match=rf"^graph {graph} returned non-finite values \(\d+ NaN, 0 inf") as exc:
        predict(fake_model(**{graph: nan_like}), _example_g(), SAMPLER, candidates=2, refine=NO_REFINEMENT, source="model")
    assert "\n" not in str(exc.value)


def test_inf_from_a_graph_is_an_error_too(fake_model):
    with pytest.raises(GraphError, match=r"graph condition returned non-finite values \(0 NaN, 500 inf"):
        predict(fake_model(condition=lambda pdf: np.full((len(pdf), 2, 125), np.inf, np.float32)),
                _example_g(), SAMPLER, candidates=2, refine=NO_REFINEMENT, source="model")


def test_networks_without_the_check_cannot_make_nan_an_atom(fake_model):
    """Training-side networks (PyTorch) are not wrapped: the kernel and recovery refuse NaN
    themselves, where they used to read it as padding and answer with one atom."""
    from types import SimpleNamespace

    # the Networks protocol, unchecked
    plain = SimpleNamespace(**fake_model().graphs)
    plain.decoder = lambda z: np.full((len(z), 4, 128, 128), np.nan, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        predict(plain, _example_g(), SAMPLER, candidates=1, refine=NO_REFINEMENT, source="model")


# -- precision per graph --------------------------------------------------------------------

def test_fp16_request_reports_what_each_graph_runs_in(tiny_model, tmp_path):
    """A graph exported without an fp16 version (its fp16 failed the parity check) runs
    fp32; the model says so per graph and in its one-line summary."""
    pytest.importorskip("onnx")
    out = tmp_path / "m"
    shutil.copytree(tiny_model, out)
    doc = json.loads((out / "manifest.json").read_text())
    del doc["graphs"]["decoder"]["fp16"]
    (out / "manifest.json").write_text(json.dumps(doc))
    m16 = load_model(out, backend="cpu", precision="fp16")
    m32 = load_model(out, backend="cpu", precision="fp32")
    assert m16.precisions == {"condition": "fp16", "prior": "fp16", "unet": "fp16", "decoder": "fp32"}
    assert m16.precision == "fp16 (decoder fp32)" and m16.requested_precision == "fp16"
    assert "fp16 (decoder fp32)" in m16.describe()
    assert m32.precision == "fp32" and set(m32.precisions.values()) == {"fp32"}
    # and that is what runs: the decoder is the fp32 graph, the condition encoder is not
    z = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(m16.decoder(z), m32.decoder(z))
    pdf = np.random.default_rng(1).normal(size=(2, 6, 500)).astype(np.float32)
    assert not np.array_equal(m16.condition(pdf), m32.condition(pdf))


def test_fp16_request_without_any_fp16_graph_is_refused(tmp_path):
    def drop_fp16(d):
        for g in d["graphs"].values():
            g.pop("fp16", None)

    with pytest.raises(ModelError, match=r"the model has no fp16 graphs \(exported without --fp16\)"):
        load_model(_model_copy(tmp_path, drop_fp16), backend="cpu", precision="fp16", warmup=False)


# -- TensorRT engine selection (pure Python; the engines themselves need TensorRT) ----------

def _engines(precision, used=None, graphs=GRAPH_NAMES):
    return {n: {"file": f"{n}.{precision}.plan", "sha256": "0" * 64, "precision": (used or {}).get(n, precision),
                "batch_min": 1, "batch_opt": 8, "batch_max": 32} for n in graphs}


def test_engines_are_chosen_by_the_requested_precision():
    man = {"tensorrt": {"fp32": _engines("fp32"), "fp16": _engines("fp16", {"decoder": "fp32"})}}
    assert {n: e["precision"] for n, e in select_engines(man, "fp16").items()} == {
        "condition": "fp16", "prior": "fp16", "unet": "fp16", "decoder": "fp32"}
    assert select_engines(man, "fp32")["unet"]["file"] == "unet.fp32.plan"
    for manifest, precision, match in [
            ({}, "fp32", "no TensorRT engines"),
            ({"tensorrt": _engines("fp16")}, "fp16", "do not record their precision"),  # the old layout
            ({"tensorrt": {"fp32": _engines("fp32")}}, "fp16", r"no fp16 TensorRT engines \(the model has fp32"),
            ({"tensorrt": {"fp16": _engines("fp16", graphs=GRAPH_NAMES[:3])}}, "fp16", "no fp16 TensorRT engine for decoder"),
    ]:
        with pytest.raises(BackendUnavailable, match=match):
            select_engines(manifest, precision)


def test_tensorrt_backend_refuses_a_precision_without_engines(tmp_path):
    model = _model_copy(tmp_path, lambda d: d.update(tensorrt={"fp32": _engines("fp32")}))
    with pytest.raises(ModelError, match=r"no usable backend \(tensorrt: no fp16 TensorRT engines"):
        load_model(model, backend="tensorrt", precision="fp16", warmup=False)
    # auto goes on to ONNX Runtime and says what it passed over
    m = load_model(model, backend="auto", precision="fp16", warmup=False)
    assert m.backend in ("cuda", "cpu") and "no fp16 TensorRT engines" in m.skipped["tensorrt"]


def test_a_batch_beyond_the_engine_profile_is_a_clear_error():
    check_engine_batch("unet.plan", 32, 1, 32)
    with pytest.raises(GraphError, match=r"unet.plan: batch 33 is outside the TensorRT engine's profile 1\.\.32"):
        check_engine_batch("unet.plan", 33, 1, 32)
    with pytest.raises(GraphError, match="batch 0"):
        check_engine_batch("unet.plan", 0, 1, 32)
