"""Exported graphs against PyTorch, the manifest, fp16, TensorRT (where it exists)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from cbldm.export.onnx_export import FP16_RTOL, FP32_RTOL, GRAPHS, example_pdfs, load_run  # noqa: E402
from cbldm.runtime.backends import ModelError, load_manifest, load_model  # noqa: E402
from cbldm.training.models import ConditionGraph, DecoderGraph, PriorGraph, UNetGraph  # noqa: E402


def test_manifest_has_what_the_runtime_needs(tiny_model, tiny_run):
    m = load_manifest(tiny_model)
    assert set(m["graphs"]) == set(GRAPHS)
    pre = m["preprocessing"]
    assert pre["r_points"] == 3000 and pre["kernel_width_t"] == 260.0 and pre["pad_atoms"] == 256
    assert m["pdf_params"]["qmax"] == 25.0 and m["schedule"]["T"] == 1000
    assert m["sampler"]["t1"] == 900
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert m["data_manifest_sha256"] == cfg["data"]["manifest_sha256"]
    for name, g in m["graphs"].items():
        assert all(v["max_rel"] <= FP32_RTOL for v in g["fp32"]["parity_vs_torch"].values()), name
        assert all(v["max_rel"] <= FP16_RTOL for v in g["fp16"]["parity_vs_torch"].values()), name


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_torch_at_any_batch(tiny_model, tiny_run, batch):
    model = load_run(tiny_run).model
    ort = load_model(tiny_model, backend="cpu")
    pdf = example_pdfs(batch, seed=3)
    pdf_t = torch.from_numpy(pdf)
    with torch.no_grad():
        cond = ConditionGraph(model)(pdf_t)
        mu, lv = PriorGraph(model)(pdf_t)
        x, t = torch.randn(batch, 1, 16, 16), torch.randint(0, 1000, (batch,))
        eps = UNetGraph(model)(x, t, cond)
        w = DecoderGraph(model)(mu)
    np.testing.assert_allclose(ort.condition(pdf), cond.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ort.prior(pdf)[0], mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ort.unet(x.numpy(), t.numpy(), cond.numpy()), eps.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ort.decoder(mu.numpy()), w.numpy(), rtol=1e-4, atol=1e-5)


def test_fp16_graphs_run_with_fp32_io(tiny_model):
    m = load_model(tiny_model, backend="cpu", precision="fp16")
    out = m.condition(example_pdfs(2))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_corrupt_graph_is_refused(tiny_model, tmp_path):
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(tiny_model, bad)
    with open(bad / "unet.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="hash differs"):
        load_model(bad)
    (bad / "manifest.json").write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(bad)


def test_model_with_other_preprocessing_is_refused(tiny_model, tmp_path):
    import json
    import shutil

    old = tmp_path / "m"
    shutil.copytree(tiny_model, old)
    doc = json.loads((old / "manifest.json").read_text())
    del doc["preprocessing"]["scale_normalisation"]  # what a model from before it looks like
    (old / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="other preprocessing.*scale_normalisation"):
        load_model(old)


def test_cuda_backend_refuses_silent_cpu_fallback(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider exists here; the fallback case cannot be shown")
    with pytest.raises(ModelError, match="no usable backend"):
        load_model(tiny_model, backend="cuda")
    assert load_model(tiny_model, backend="auto").backend == "cpu"


def test_tensorrt_engines(tiny_run, tmp_path):
    from cbldm.export.tensorrt_build import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT path untested here: {why}")
    from cbldm.export.onnx_export import export_run

    from cbldm.runtime.backends import GraphError

    export_run(tiny_run, tmp_path / "trt", fp16=True, tensorrt=True, batch_sizes=(1, 4, 8), log=lambda m: None)
    engines = load_manifest(tmp_path / "trt")["tensorrt"]
    assert set(engines) == {"fp32", "fp16"}  # one set per precision, each entry saying its own
    m = load_model(tmp_path / "trt", backend="tensorrt", precision="fp16")
    assert m.backend == "tensorrt" and m.precisions == {n: e["precision"] for n, e in engines["fp16"].items()}
    assert load_model(tmp_path / "trt", backend="tensorrt").precision == "fp32"
    ref = load_model(tmp_path / "trt", backend="cpu")
    pdf = example_pdfs(4)
    np.testing.assert_allclose(m.condition(pdf), ref.condition(pdf), rtol=FP16_RTOL, atol=1e-3)
    with pytest.raises(GraphError, match=r"batch 9 is outside the TensorRT engine's profile 1\.\.8"):
        m.condition(example_pdfs(9))


def test_what_can_fail_is_checked_before_the_graphs_are_exported(tiny_run, tiny_model, tmp_path):
    """A file that is no library, or --tensorrt where TensorRT is missing, fail in one line before
    any graph is written; a folder that is a file is a usage error. A directory left without a
    manifest is no model (cbldm-run refuses it), where it had been answered without its library."""
    import subprocess
    import sys
    from pathlib import Path

    from cbldm.export.tensorrt_build import tensorrt_available

    def export(*args):
        return subprocess.run([sys.executable, "-m", "cbldm.export.cli", str(tiny_run), *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    readme = Path(__file__).resolve().parents[1] / "README.md"
    res = export("--out", tmp_path / "m", "--library", readme)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {readme}: not a cluster library (not a .npz of arrays; cbldm-data library writes one)"], res.stderr
    assert not (tmp_path / "m").exists()
    if not tensorrt_available()[0]:
        res = export("--out", tmp_path / "m", "--tensorrt")
        assert res.returncode == 1 and "--tensorrt: tensorrt not importable" in res.stderr
        assert not (tmp_path / "m").exists()
    (tmp_path / "f").write_text("")
    assert export("--out", tmp_path / "f").returncode == 2
    # a model there already: a wrong run path leaves it whole (its manifest is not this export's)
    import shutil

    shutil.copytree(tiny_model, tmp_path / "model")
    before = (tmp_path / "model" / "manifest.json").read_bytes()
    res = subprocess.run([sys.executable, "-m", "cbldm.export.cli", str(tmp_path / "no-run"), "--out",
                          str(tmp_path / "model")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and (tmp_path / "model" / "manifest.json").read_bytes() == before, res.stderr
    # exported again without --fp16: the fp16 graphs of the first export, which the new manifest
    # does not name, are gone
    from cbldm.export.onnx_export import attach_library, export_run, install_export

    assert list((tmp_path / "model").glob("*.fp16.onnx"))
    export_run(tiny_run, tmp_path / "staging", fp16=False, log=lambda m: None)
    attach_library(tmp_path / "staging", tmp_path / "model" / "library.npz")
    install_export(tmp_path / "staging", tmp_path / "model")
    assert not list((tmp_path / "model").glob("*.fp16.onnx"))
    assert load_model(tmp_path / "model").precisions == {n: "fp32" for n in GRAPHS}


def test_an_export_that_fails_midway_leaves_the_model_there_whole(tiny_run, tiny_model, tmp_path):
    """The export is written beside OUT and moved in when everything passed: a failure (or an
    interrupt) after some graphs leaves an existing model byte for byte, and no staging folder."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(tiny_model, tmp_path / "model")
    before = {f.name: f.read_bytes() for f in (tmp_path / "model").iterdir()}
    script = f"""
import sys
from pathlib import Path
import cbldm.export.onnx_export as ox
def half(run, out, **kw):
    (Path(out) / "condition.onnx").write_bytes(b"half written")
    raise RuntimeError("simulated failure after the first graph\\n" + "torch noise " * 500)
ox.export_run = half
from cbldm.export.cli import main
sys.argv = ["cbldm-export", {str(tiny_run)!r}, "--out", {str(tmp_path / "model")!r}]
main()
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {tiny_run}: RuntimeError: simulated failure after the first graph"], res.stderr
    assert {f.name: f.read_bytes() for f in (tmp_path / "model").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.export-")] == []
