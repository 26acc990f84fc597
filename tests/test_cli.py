"""The commands as a user meets them: exit codes, one-line messages, help, info, extras."""
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "Pt_decahedron_p3_q2_r1.gr"
SHIPPED = REPO / "models" / "default"
CLIS = {"cbldm-run": "cbldm.runtime.cli_run", "cbldm-bench": "cbldm.runtime.cli_bench",
        "cbldm-data": "cbldm.training.cli_data", "cbldm-train": "cbldm.training.cli_train",
        "cbldm-eval": "cbldm.training.cli_eval", "cbldm-export": "cbldm.export.cli"}


def run(module, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["predict", EXAMPLE, "--backend", "gpu"], "error: --backend 'gpu': choose one of auto, tensorrt, cuda, cpu"),
    (["predict", EXAMPLE, "--precision", "fp64"], "error: --precision 'fp64': choose one of fp32, fp16"),
    (["predict", EXAMPLE, "-k", "0"], "error: --candidates must be >= 1"),
    (["predict", EXAMPLE, "--element", "Xx"], "error: unknown element 'Xx' (give a chemical symbol such as Au, Pt)"),
    (["watch", REPO / "examples", "-k", "0"], "error: --candidates must be >= 1"),
    (["watch", REPO / "examples", "--element", "Xx"],
     "error: unknown element 'Xx' (give a chemical symbol such as Au, Pt)"),
    (["watch", REPO / "examples", "--backend", "gpu"], "error: --backend 'gpu': choose one of auto, tensorrt, cuda, cpu"),
    (["info", "--precision", "int8"], "error: --precision 'int8': choose one of fp32, fp16"),
    (["predict", EXAMPLE, "--source", "oracle"], "error: --source 'oracle': choose one of both, model, library"),
    (["predict", EXAMPLE, "--qmax", "0"], "error: --qmax must be >= 5 1/A (a PDF's first shell needs it), got 0.0"),
    (["predict", EXAMPLE, "--element", "O"], "error: --element O: O is not a metal: cbldm answers metal nanoparticles"),
    (["watch", REPO / "examples", "--element", "se"],
     "error: --element se: Se is not a metal: cbldm answers metal nanoparticles"),
    (["predict", EXAMPLE, "--qmin", "30", "--qmax", "20"], "error: --qmin (30.0) must be below --qmax (20.0)"),
    (["predict", EXAMPLE, "--qdamp", "0.2"], "error: --qdamp must be within 0-0.08 1/A, got 0.2"),
    (["predict", EXAMPLE, "--refine", "-1"], "error: --refine must be >= 0"),
    (["predict", EXAMPLE, "--qmax", "100"], "error: --qmax 100 is beyond any PDF measurement's (at most 60 1/A): 1/nm?"),
    (["predict", EXAMPLE, "--steps-after", "-2"],
     "error: sampler settings: U-Net calls cannot be negative, got --steps-before 0, --steps-after -2"),
    (["watch", REPO / "examples", "--refine-iter", "0"], "error: --refine-iter must be >= 1"),
])
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
    res = run("cbldm.runtime.cli_run", *args, "-o" if args[0] != "info" else "--model",
              tmp_path / "out" if args[0] != "info" else SHIPPED)
    assert res.returncode == 2, res.stderr
    assert one_error_line(res) == message
    assert not (tmp_path / "out").exists()


def test_an_unreadable_file_does_not_stop_the_batch(tmp_path):
    """typer's own readable check refused the whole command line (a usage error, no file
    answered); the file is now refused alone, in one line, and the next one answered. The
    process denies the read itself (root reads any file whatever its mode)."""
    locked = tmp_path / "locked.gr"
    locked.write_text("0 1\n")
    script = f"""
import os, pathlib, sys
locked = pathlib.Path({str(locked)!r})
access, read = os.access, pathlib.Path.read_bytes
os.access = lambda p, mode, **k: False if pathlib.Path(p) == locked else access(p, mode, **k)
pathlib.Path.read_bytes = lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied")) \\
    if self == locked else read(self)
from cbldm.runtime.cli_run import main
sys.argv = ["cbldm-run", "predict", str(locked), {str(EXAMPLE)!r}, "-o", {str(tmp_path / "out")!r},
            "--source", "library", "--refine", "0", "--no-plot"]
main()
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    errors = [l for l in res.stderr.splitlines() if l.startswith("error")]
    assert errors == [f"error: {locked}: cannot be read (Permission denied)"], res.stderr
    assert (tmp_path / "out" / f"{EXAMPLE.stem}.json").exists() and "Traceback" not in res.stderr


def test_a_file_name_in_another_encoding_is_answered_and_a_failing_file_does_not_stop_the_batch(tmp_path):
    """A Latin-1 name from a Windows share ('échantillon' as the byte e9) reaches Python with that
    byte escaped, which the UTF-8 outputs do not take: it stopped the whole batch at the first
    output (UnicodeEncodeError, no file named). It is answered now, its name shown with U+FFFD.
    An unexpected failure of one file is said in one line naming it, and the next file answered."""
    import os

    odd = os.path.join(os.fsencode(tmp_path), b"JQ_\xe9chantillon.gr")
    with open(odd, "wb") as fh:
        fh.write(EXAMPLE.read_bytes())
    script = f"""
import sys
from cbldm.runtime import results
from cbldm.runtime.cli_run import main
real = results.process_file
def flaky(path, *a, **k):
    if str(path).endswith("boom.gr"):
        raise RuntimeError("simulated")
    return real(path, *a, **k)
results.process_file = flaky
sys.argv = ["cbldm-run", "predict", {os.fsdecode(odd)!r}, {str(tmp_path / "boom.gr")!r}, {str(EXAMPLE)!r},
            "-o", {str(tmp_path / "out")!r}, "--source", "library", "--refine", "0", "--no-plot"]
main()
"""
    (tmp_path / "boom.gr").write_bytes(EXAMPLE.read_bytes())
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    out, err = res.stdout.decode(), res.stderr.decode()
    assert res.returncode == 1 and "Traceback" not in err, err
    report = tmp_path / "out" / "boom.error.txt"
    assert [l for l in err.splitlines() if l.startswith("error")] == \
        [f"error: {tmp_path / 'boom.gr'}: RuntimeError: simulated (a defect of cbldm: please report it with the file; "
         f"the traceback is in {report})"]
    text = report.read_text()    # what a defect report needs, kept out of the one-line error
    assert text.startswith(f"error: {tmp_path / 'boom.gr'}: RuntimeError") and "Traceback" in text and "flaky" in text
    assert "JQ_\ufffdchantillon.gr: 146 atoms" in out, out
    names = os.listdir(os.fsencode(tmp_path / "out"))
    assert b"JQ_\xe9chantillon.json" in names and f"{EXAMPLE.stem}.json".encode() in names
    doc = json.loads((tmp_path / "out" / os.fsdecode(b"JQ_\xe9chantillon.json")).read_text())
    assert doc["source"].endswith("JQ_\ufffdchantillon.gr")


def test_export_usage_errors_exit_2(tmp_path):
    res = run("cbldm.export.cli", tmp_path, "--out", tmp_path / "m", "--exporter", "onnx")
    assert res.returncode == 2 and one_error_line(res) == "error: --exporter 'onnx': choose dynamo or torchscript"


def test_element_given_is_used_canonically(tiny_model, tmp_path):
    """--element is checked up front and spelled the way the outputs need it."""
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "-o", tmp_path, "--model", tiny_model, "-k", "1",
              "--element", "pt", "--no-plot", "--refine", "0", timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / f"{EXAMPLE.stem}.json").read_text())["element"] == "Pt"


def test_a_graph_error_fails_the_file_in_one_line(fake_model, tmp_path, monkeypatch, capsys):
    """A model returning NaN for an input: exit 1, the file and the graph named, nothing written."""
    import numpy as np

    from cbldm.runtime import cli_run

    bad = fake_model(unet=lambda x, t, cond: np.full_like(x, np.nan))
    monkeypatch.setattr(cli_run, "_open", lambda *a: bad)
    monkeypatch.setattr(sys, "argv", ["cbldm-run", "predict", str(EXAMPLE), "-o", str(tmp_path / "out"),
                                      "-k", "2", "--no-plot"])
    with pytest.raises(SystemExit) as exc:
        cli_run.main()
    assert exc.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {EXAMPLE}: graph unet returned non-finite values (512 NaN, 0 inf among 512); "
                      "no structure is made from them"]
    assert not (tmp_path / "out").exists()


def test_info_prints_readable_lines_and_json_on_request():
    res = run("cbldm.runtime.cli_run", "info", "--model", SHIPPED, "--backend", "cpu")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    labels = [line[:11].strip() for line in lines if line[:11].strip()]
    assert labels[:4] == ["model", "made", "backend", "precision"]
    assert {"networks", "sampler", "schedule", "PDF", "data", "library", "held-out"} <= set(labels)
    # no Python dicts or JSON blobs for a person to decode
    assert not any(ch in res.stdout for ch in "{}[]'\""), res.stdout
    assert "cpu (CPUExecutionProvider)" in res.stdout and "fp32 (every graph)" in res.stdout
    assert re.search(r"held-out\s+unseen shapes \(\d+ PDFs\): library \d+ % exact, pair err \d\.\d\d A, Rwp 0\.\d{3}; model", res.stdout)
    assert "held-out families (a) (36 PDFs)" in res.stdout and "held-out families (b) (36 PDFs)" in res.stdout
    doc = json.loads(run("cbldm.runtime.cli_run", "info", "--model", SHIPPED, "--backend", "cpu", "--json").stdout)
    assert doc["backend"] == "cpu" and doc["precisions"]["unet"] == "fp32"
    assert doc["schedule"] == {"T": 1000, "s": 0.0005, "kind": "cosine"} and doc["pdf_params"]["qmax"] == 25.0


def _commands():
    import typer

    from cbldm.runtime.cliutil import readable_help

    for prog, module in CLIS.items():
        cmd = typer.main.get_command(importlib.import_module(module).app)
        readable_help(cmd)
        subs = getattr(cmd, "commands", None)
        for name, sub in (subs.items() if subs else [("", cmd)]):
            yield prog, name, cmd, sub


def test_every_option_and_argument_has_help():
    missing = [f"{prog} {name} {p.name}" for prog, name, _, sub in _commands() for p in sub.params
               if not getattr(p, "help", None)]
    assert not missing


def test_help_shows_readable_metavars(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    seen = 0
    for prog, name, cmd, _ in _commands():
        args = [name, "--help"] if name else ["--help"]
        cmd.main(args, prog_name=prog, standalone_mode=False)
        text = capsys.readouterr().out
        assert "Usage:" in text, (prog, name)
        assert "list[" not in text and not re.search(r"\{\w+\}", text), (prog, name, text)
        seen += 1
    assert seen >= 15
    cmd = next(c for p, n, c, _ in _commands() if p == "cbldm-run")
    cmd.main(["predict", "--help"], prog_name="cbldm-run", standalone_mode=False)
    assert "Usage: cbldm-run predict [OPTIONS] FILE..." in capsys.readouterr().out


def test_help_paragraphs_are_wrapped_at_the_terminal_not_at_the_docstring(capsys, monkeypatch):
    """A docstring line kept its break inside rich's wrapping: 'warnings; it is' ended a line
    of its own at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    cmd = next(c for p, n, c, _ in _commands() if p == "cbldm-run")
    for name in ("predict", "watch"):
        cmd.main([name, "--help"], prog_name="cbldm-run", standalone_mode=False)
        lines = [l.strip() for l in capsys.readouterr().out.splitlines() if l.strip() and not l.strip()[0] in "│╭╰"]
        # every line of a paragraph but its last fills most of the width
        short = [a for a, b in zip(lines, lines[1:]) if len(a) < 50 and b[:1].islower()]
        assert not short, (name, short)


BLOCK = r"""
import importlib.abc, runpy, sys
blocked = sys.argv[1]
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__")
"""


@pytest.mark.parametrize("blocked,module,args,command,extra", [
    ("h5py", "cbldm.training.cli_data", ["generate", "--out", "{tmp}/ds", "--limit", "5", "--workers", "1"],
     "cbldm-data generate", "data"),
    ("torch", "cbldm.training.cli_train", ["all", "--data", "{tmp}/ds", "--out", "{tmp}/run"], "cbldm-train", "train"),
    ("torch", "cbldm.training.cli_eval", ["accuracy", "--model", "{tmp}/run", "--data", "{tmp}/ds", "--out",
                                          "{tmp}/eval"], "cbldm-eval accuracy", "train"),
    ("h5py", "cbldm.training.cli_eval", ["accuracy", "--model", str(SHIPPED), "--data", "{tmp}/ds", "--out",
                                         "{tmp}/eval"], "cbldm-eval accuracy", "data"),
    ("onnx", "cbldm.export.cli", ["{tmp}/run", "--out", "{tmp}/model"], "cbldm-export", "export"),
])
def test_a_missing_extra_fails_at_once_in_one_line_and_writes_nothing(tmp_path, blocked, module, args, command,
                                                                      extra):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", BLOCK, blocked, module, *[a.format(tmp=tmp_path) for a in args]],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert res.returncode == 1, res.stderr
    assert one_error_line(res) == (f"error: {command} needs the '{extra}' extra ({blocked} not importable): "
                                   f'pip install "cbldm[{extra}]"')
    assert list(tmp_path.iterdir()) == []
    assert seconds < 10, seconds  # about 0.3 s on an idle 2-core machine; it took 11 s and more before


def test_extras_checked_are_the_ones_pyproject_installs():
    tomllib = pytest.importorskip("tomllib")
    from cbldm.runtime.cliutil import EXTRAS

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {re.split(r"[<>=!~ \[]", d)[0].replace("-", "_").lower() for d in declared[extra]}
        assert names == set(modules), extra


def test_results_folder_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "-o", tmp_path / "taken")
    assert res.returncode == 2 and one_error_line(res) == f"error: -o {tmp_path / 'taken'}: not a writable folder"
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "-o", tmp_path / "taken" / "sub")
    assert res.returncode == 2 and "cannot be created" in one_error_line(res)
    (tmp_path / "in").mkdir()     # the service too, before its model loads (it raised FileExistsError after)
    res = run("cbldm.runtime.cli_run", "watch", tmp_path / "in", "-o", tmp_path / "taken")
    assert res.returncode == 2 and one_error_line(res) == f"error: -o {tmp_path / 'taken'}: not a writable folder"


def test_an_element_taken_by_default_is_said_on_the_result_line(tiny_model, tmp_path):
    bare = tmp_path / "bare.gr"     # the example's data without its header: no composition
    bare.write_text("\n".join(line for line in EXAMPLE.read_text().split("#### start data")[1].splitlines()
                              if line.strip() and not line.startswith("#")) + "\n")
    res = run("cbldm.runtime.cli_run", "predict", bare, "-o", tmp_path / "out", "--model", tiny_model, "-k", "1",
              "--no-plot", "--refine", "0", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "atoms (Au assumed: the header names no composition; give --element)" in res.stdout, res.stdout
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "-o", tmp_path / "out", "--model", tiny_model, "-k", "1",
              "--no-plot", "--refine", "0", timeout=300)
    line = next(li for li in res.stdout.splitlines() if "atoms" in li and "Rwp" in li)
    assert res.returncode == 0 and "give --element" not in line, res.stdout


def test_a_model_that_does_not_load_or_a_folder_that_cannot_be_made_leave_nothing(tmp_path):
    """A bad --model fails after the results folder is made (watch locks it first): the folder,
    and the lock in it, go again. A results folder that cannot be made is one line, exit 2,
    before any file (not 'a defect of cbldm' for each)."""
    d = tmp_path / "in"
    d.mkdir()
    for args in (["watch", d, "-o", tmp_path / "out" / "deeper"], ["predict", EXAMPLE, "-o", tmp_path / "out"]):
        res = run("cbldm.runtime.cli_run", *args, "--model", tmp_path / "nope")
        assert res.returncode == 1 and one_error_line(res).startswith("error: "), res.stderr
        assert not (tmp_path / "out").exists(), list((tmp_path / "out").rglob("*"))
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, EXAMPLE, "-o", "/proc/cbldm-results")
    assert res.returncode == 2 and one_error_line(res).startswith("error: -o /proc/cbldm-results: cannot be created")


def test_a_model_without_its_library_is_refused_for_library_answers_and_said_for_both(tiny_model, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "library.npz").unlink()
    man = json.loads((bare / "manifest.json").read_text())
    del man["library"]
    (bare / "manifest.json").write_text(json.dumps(man))
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "--model", bare, "--source", "library", "-o", tmp_path / "o")
    assert res.returncode == 2 and one_error_line(res).startswith("error: --source library: the model ")
    assert not (tmp_path / "o").exists()
    res = run("cbldm.runtime.cli_run", "predict", EXAMPLE, "--model", bare, "-o", tmp_path / "o", "--no-plot",
              "--refine", "0")
    # (the tiny model's networks decode no atoms: that file then gets no answer, exit 1)
    assert "has no cluster library: every answer comes from the networks alone" in res.stderr.splitlines()[0]
