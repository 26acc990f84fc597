"""cbldm-eval on a tiny run: the commands run end to end and write what they promise."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cbldm.training.cli_eval", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_accuracy_and_reconstruction(tiny_run, tiny_dataset, tmp_path):
    res = run("accuracy", "--model", tiny_run, "--data", tiny_dataset, "--split", "train",
              "--per-type", "1", "--candidates", "1", "--steps-before", "2", "--steps-after", "2",
              "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert doc["n"] == 7 and doc["table"]["total"]["n"] == 7 and (tmp_path / "examples.png").exists()
    assert "| total | 7 |" in res.stdout
    res = run("reconstruction", "--model", tiny_run, "--data", tiny_dataset, "--split", "train",
              "--per-type", "1", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "reconstruction.json").read_text())
    assert rec["n"] == 7 and {"rwp", "rmsd_A", "n_atoms_pred"} <= set(rec["results"][0])
    assert 0 <= rec["table"]["total"]["rwp"] <= 1.0 + 1e-9  # scale is clamped at 0: Rwp <= 1


def test_reconstruction_refuses_an_exported_model(tiny_model, tiny_dataset, tmp_path):
    res = run("reconstruction", "--model", tiny_model, "--data", tiny_dataset, "--out", tmp_path)
    assert res.returncode == 1 and res.stderr.startswith("error:") and "encoder" in res.stderr
