"""cbldm-run predict: outputs, bad input, no overwriting; the runtime sampler vs training."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "Pt_decahedron_p3_q2_r1.gr"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_predict_writes_all_outputs_and_never_overwrites(tiny_model, tmp_path):
    res = run("predict", EXAMPLE, "-o", tmp_path, "--model", tiny_model, "-k", "2")
    assert res.returncode == 0, res.stderr
    for suffix in (".xyz", ".fit.gr", ".json", ".png"):
        assert (tmp_path / f"Pt_decahedron_p3_q2_r1{suffix}").exists()
    doc = json.loads((tmp_path / "Pt_decahedron_p3_q2_r1.json").read_text())
    assert doc["element"] == "Pt" and doc["model"]["backend"] == "cpu"
    sources = [c["source"] for c in doc["candidates"]]
    # the library's LIBRARY_TOP best matches and at most the 2 samples (a tiny model may decode no atoms)
    from cbldm.runtime.pipeline import LIBRARY_TOP

    assert sources.count("library") == LIBRARY_TOP == 6 and sources.count("model") <= 2
    # refinement is enabled but not run: the library's match already fits to Rwp 0.000
    assert set(doc["timings"]) >= {"read_s", "encode_s", "sample_s", "decode_s", "recover_s", "library_search_s",
                                   "fit_s", "total_s"}
    assert {"verdict", "warnings", "motif", "diameter_A", "answer_source", "refined_physics", "fit", "particle",
            "rwp_before_refinement", "refined", "refine_shift_rms_A", "min_pair_distance_A",
            "detached_atoms"} <= set(doc)
    assert doc["verdict"] in ("ok", "doubtful", "unusable")
    # the example is a recipe shape fitted with the training physics: the library finds it exactly
    assert doc["n_atoms"] == 146 and doc["rwp"] < 0.02 and doc["verdict"] == "ok", doc["warnings"]
    assert doc["fit"]["qmax"] == 25.0 and doc["fit"]["from"]["qmax"] == "file header"
    # a noise-free simulation: no noise to take off, the whole Rwp is misfit
    assert doc["fit"]["noise_rwp"] < 0.001 and abs(doc["fit"]["rwp_beyond_noise"] - doc["rwp"]) < 0.001
    assert doc["sampler"]["refine"]["top"] == 4
    first = (tmp_path / "Pt_decahedron_p3_q2_r1.json").read_bytes()
    assert doc["fit"]["qdamp_held"] == 0.0 and doc["fit"]["from"]["qdamp"] == "file header"   # it says 'qdamp = 0'
    # --qdamp wins over the header, is held in every fit, and the JSON says where it came from
    res = run("predict", EXAMPLE, "-o", tmp_path, "--model", tiny_model, "-k", "1", "--no-plot", "--qdamp", "0.03")
    assert res.returncode == 0 and (tmp_path / "Pt_decahedron_p3_q2_r1-2.json").exists()
    assert (tmp_path / "Pt_decahedron_p3_q2_r1.json").read_bytes() == first
    held = json.loads((tmp_path / "Pt_decahedron_p3_q2_r1-2.json").read_text())
    assert held["fit"]["qdamp_held"] == 0.03 and held["fit"]["from"]["qdamp"] == "option"
    assert held["refined_physics"]["qdamp_invA"] == 0.03 and held["rwp"] > doc["rwp"]
    assert all(c.get("rwp") is None or c["rwp"] >= 0 for c in held["candidates"])


def test_predict_bad_input_one_line_each_and_others_still_done(tiny_model, tmp_path):
    (tmp_path / "empty.gr").write_text("")
    (tmp_path / "nan.gr").write_text("\n".join(f"{0.1 * i} nan" for i in range(200)))
    # valid numbers, but no nearest-neighbour peak (r in nm, say): nothing to scale by
    (tmp_path / "ramp.gr").write_text("\n".join(f"{0.01 * i} {-0.01 * i}" for i in range(3000)))
    out = tmp_path / "out"
    res = run("predict", tmp_path / "empty.gr", EXAMPLE, tmp_path / "nan.gr", tmp_path / "missing.gr",
              tmp_path / "ramp.gr", "-o", out, "--model", tiny_model, "-k", "1", "--no-plot")
    assert res.returncode == 1
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 4 and "Traceback" not in res.stderr
    assert any("ramp.gr" in e and "nearest-neighbour peak" in e for e in errors), errors
    assert (out / "Pt_decahedron_p3_q2_r1.json").exists()


def test_bad_model_dir_and_usage(tmp_path):
    res = run("predict", EXAMPLE, "--model", tmp_path)
    assert res.returncode == 1 and res.stderr.strip().startswith("error:") and "manifest" in res.stderr
    assert run("predict", EXAMPLE, "--model", tmp_path, "-k", "0").returncode == 2
    res = run("predict", EXAMPLE, "--refine", "-1")
    assert res.returncode == 2 and res.stderr.strip().startswith("error: --refine")


def test_runtime_sampler_on_onnx_equals_training_sampler_on_torch(tiny_model, tiny_run):
    """One sampler implementation: driven by the PyTorch networks or by the ONNX Runtime
    sessions it gives the same latents and the same decoded kernels. (Atom counts are a
    threshold on the kernel: a tiny model can sit on it, so they are not compared.)"""
    from cbldm.export.onnx_export import default_sampler, example_pdfs
    from cbldm.runtime.backends import load_model
    from cbldm.runtime.preprocess import model_input
    from cbldm.runtime.sampling import Schedule, skip_step_sample
    from cbldm.training.runs import TorchNetworks

    pdf = np.repeat(model_input(example_pdfs(2).reshape(2, -1).astype(np.float64))[0], 2, axis=0)
    cfg = default_sampler(tiny_run)
    assert cfg.clip is not None  # recorded by the trainer, carried by the export
    out = []
    for nets in (TorchNetworks(tiny_run), load_model(tiny_model, backend="cpu")):
        cond = nets.condition(pdf)
        mu, lv = nets.prior(pdf)
        z = skip_step_sample(Schedule(), nets.unet, cond, mu.astype(np.float64), lv.astype(np.float64),
                             cfg, np.random.default_rng(7))
        out.append((z, nets.decoder(z.astype(np.float32))))
    (za, wa), (zb, wb) = out
    np.testing.assert_allclose(za, zb, atol=1e-3 * max(1.0, np.abs(za).max()))
    np.testing.assert_allclose(wa, wb, atol=2e-3)
