"""cbldm-run watch, driven as a real process with real files: slow, bursty and broken."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = (REPO / "examples" / "Pt_decahedron_p3_q2_r1.gr").read_text()


def start(directory, out, model, *extra):
    return subprocess.Popen([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", str(directory), "-o", str(out),
                             "--model", str(model), "-k", "1", "--no-plot", "--interval", "0.3", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal(out):
    p = out / ".cbldm-journal.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def wait_for(cond, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.2)
    return False


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def write_slowly(path, text, chunks=6, pause=0.4):
    step = len(text) // chunks + 1
    with open(path, "w") as fh:
        for i in range(0, len(text), step):
            fh.write(text[i:i + step])
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(pause)


@pytest.mark.parametrize("poll", [False, True])
def test_watch_slow_burst_broken_rename_backlog_restart(tiny_model, tmp_path, poll):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "backlog.gr").write_text(EXAMPLE)  # there before the service starts
    extra = ["--poll", "--settle", "1.0"] if poll else []
    proc = start(d, out, tiny_model, *extra)
    try:
        assert wait_for(lambda: len(journal(out)) == 1), proc.stderr.read() if proc.poll() is not None else ""
        write_slowly(d / "slow.gr", EXAMPLE)  # never to be read half-written
        for i in range(4):  # a burst
            (d / f"burst{i}.gr").write_text(EXAMPLE)
        (d / "broken.gr").write_text("0 1\n0.1 2\nnot a number\n")
        tmp = d / ".incoming.tmp"  # an atomic writer: write a hidden temp file, rename into place
        tmp.write_text(EXAMPLE)
        os.replace(tmp, d / "renamed.gr")
        (d / "notes.md").write_text("not a PDF")
        assert wait_for(lambda: len(journal(out)) == 8)
    finally:
        stdout, _ = stop(proc)
    recs = {Path(r["path"]).name: r for r in journal(out)}
    assert set(recs) == {"backlog.gr", "slow.gr", "burst0.gr", "burst1.gr", "burst2.gr", "burst3.gr",
                         "broken.gr", "renamed.gr"}
    assert recs["broken.gr"]["status"] == "error" and (out / "broken.error.txt").exists()
    assert all(r["status"] == "ok" for n, r in recs.items() if n != "broken.gr")
    slow = json.loads((out / "slow.json").read_text())
    assert slow["resampling"]["source_points"] == 3000  # the whole file, not a prefix
    assert "slow.gr" in stdout and "Rwp" in stdout

    # a restart redoes nothing; a changed file is done again
    proc = start(d, out, tiny_model, *extra)
    try:
        time.sleep(3)
        assert len(journal(out)) == 8
        (d / "burst0.gr").write_text(EXAMPLE + "# re-measured\n")
        assert wait_for(lambda: len(journal(out)) == 9)
    finally:
        stop(proc)
    assert (out / "burst0-2.json").exists() and (out / "burst0.json").exists()


def test_watch_refuses_missing_directory(tiny_model, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", str(tmp_path / "nope"),
                          "--model", str(tiny_model)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("error:")
