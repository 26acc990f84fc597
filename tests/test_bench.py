"""cbldm-bench as installed: its own input, one OpenBLAS thread, output where the user says."""
import filecmp
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Records OPENBLAS_NUM_THREADS at the moment numpy is first imported, then imports the module.
THREADS_AT_NUMPY = r"""
import importlib, os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_NUM_THREADS"))
        return None
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
# numpy may load later, when a command runs: the setting must be in place by then too
seen = seen or [os.environ.get("OPENBLAS_NUM_THREADS")]
print("numpy loaded with OPENBLAS_NUM_THREADS =", seen[0])
"""

BLOCK_TORCH = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
sys.meta_path.insert(0, Block())
from cbldm.runtime.cli_bench import main
main()
"""


def _entry_point_modules():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return sorted({target.split(":")[0] for target in scripts.values()})


def test_every_cli_sets_one_openblas_thread_before_numpy_loads():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for module in _entry_point_modules():
        res = subprocess.run([sys.executable, "-c", THREADS_AT_NUMPY, module], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "OPENBLAS_NUM_THREADS = 1" in res.stdout, (module, res.stdout)


def test_example_pdf_is_package_data():
    from cbldm.runtime.cli_bench import example_pdf

    tomllib = pytest.importorskip("tomllib")
    p = example_pdf()
    assert p.is_file() and filecmp.cmp(p, REPO / "examples" / p.name, shallow=False)  # the README's copy
    # what setuptools puts in the wheel, beside runtime/*.py
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(f"data/{p.name}", g) for g in globs["cbldm.runtime"])


def test_default_output_never_replaces_a_file(tmp_path):
    from cbldm.runtime.cli_bench import default_out

    assert default_out(tmp_path) == tmp_path / "cbldm-bench.json"
    (tmp_path / "cbldm-bench.json").write_text("{}")
    assert default_out(tmp_path) == tmp_path / "cbldm-bench-2.json"


def test_bench_runs_with_no_file_and_writes_where_it_is_run(tiny_model, tmp_path):
    tracked = REPO / "benchmarks" / "results" / "runtime.json"
    before = tracked.read_bytes() if tracked.exists() else None
    res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_bench", "--model", str(tiny_model), "-k", "1",
                          "--repeats", "1", "--full-repeats", "1", "--batch-sizes", "1,2"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "cbldm-bench.json").read_text())
    assert (tracked.read_bytes() if tracked.exists() else None) == before
    assert Path(doc["files"][0]).name == "Pt_decahedron_p3_q2_r1.gr"
    assert doc["machine"]["openblas_num_threads"] == "1"
    rows = doc["rows"]
    e2e = {(r["sampler"], r["precision"], r["refine"]): r for r in rows if r["row"] == "end to end"}
    assert set(e2e) >= {("skip-step", "fp32", 4), ("skip-step", "fp32", 0), ("full DDPM", "fp32", 4),
                        ("skip-step", "fp16", 4)}
    assert rows[0]["x_vs_shipped_e2e"] == 1.0 and rows[0]["refine"] == 4
    assert e2e[("full DDPM", "fp32", 4)]["unet_calls"] == 1000
    # refinement is enabled but skipped here: the library fits the example to Rwp 0.000
    assert {"read_s", "sample_s", "recover_s", "library_search_s", "fit_s", "write_s"} <= set(rows[0]["stages_p50_s"])
    assert "refine_s" not in e2e[("skip-step", "fp32", 0)]["stages_p50_s"]
    assert sorted(r["batch"] for r in rows if r["row"] == "networks" and r["precision"] == "fp32") == [1, 2]
    assert "p50 per stage" in res.stdout and "x_vs_shipped_e2e" in res.stdout


def test_bench_run_without_torch_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "--run", str(tmp_path)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: --run needs PyTorch") and len(res.stderr.splitlines()) == 1, res.stderr
    assert not list(tmp_path.iterdir())


def test_bench_usage_errors_and_benchmark_script_help(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_bench", "--batch-sizes", "8,0"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: --batch-sizes"), res.stderr
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_runtime.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--out" in res.stdout, res.stderr


def test_large_particle_benchmark_compares_the_envelope_with_the_debye_sum(tmp_path):
    out = tmp_path / "large.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_large.py"), "--diameters", "24",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO / "benchmarks")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["rows"]
    # a 24 A sphere's cut surface is rough; the model still tracks the sum within a few per cent
    assert row["atoms"] > 300 and row["speedup"] > 1 and row["rwp_envelope_vs_debye"] < 0.03
    assert "rwp_envelope_vs_debye" in res.stdout
