"""cbldm-run watch, driven as a real process with real files: slow, appended, bursty, broken, crashing."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = (REPO / "examples" / "Pt_decahedron_p3_q2_r1.gr").read_text()
EXAMPLE_POINTS = 3000  # r = 0.00 ... 29.99

# The real CLI with faults injected into the per-file work: "crash*" files raise an
# unexpected (non-input) exception, "kill*" files kill the process outright, mid-file.
FAULTY = r"""
import os, signal, sys
import cbldm.runtime.results as results
real = results.process_file
def process_file(path, *args, **kwargs):
    if path.name.startswith("crash"):
        raise RuntimeError("injected fault")
    if path.name.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if path.name.startswith("swap") and not path.read_text().startswith("# swapped"):
        path.write_text("# swapped\n" + path.read_text())   # a writer between the hash and the read
    if path.name.startswith("slow") and os.environ.get("CBLDM_TEST_SLOW"):
        import time
        time.sleep(120)
    return real(path, *args, **kwargs)
results.process_file = process_file
from cbldm.runtime.cli_run import main
main()
"""


class Service:
    """``cbldm-run watch`` in a subprocess; its output goes to files so a test can wait on a log line."""

    def __init__(self, directory, out, model, *extra, faulty=False, env=None):
        self.log = directory.parent / f"watch-{time.monotonic_ns()}.log"
        self.err = self.log.with_suffix(".err")
        head = [sys.executable, "-c", FAULTY] if faulty else [sys.executable, "-m", "cbldm.runtime.cli_run"]
        cmd = [*head, "watch", str(directory), *(["-o", str(out)] if out is not None else []),
               "--model", str(model), "-k", "1", "--no-plot", "--refine", "0", "--interval", "0.3", *extra]
        with open(self.log, "w") as fo, open(self.err, "w") as fe:
            self.proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)

    def stdout(self):
        return self.log.read_text()

    def stderr(self):
        return self.err.read_text()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0, self.stderr()
        return self.stdout()


def journal(out):
    p = out / ".cbldm-journal.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def outcomes(out):
    """Files done, in order: journal records that are outcomes, not 'started' marks."""
    return [r for r in journal(out) if r["status"] in ("ok", "error")]


def wait_for(cond, timeout=90, service=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if service is not None and not service.alive():
            raise AssertionError(f"the service exited ({service.proc.returncode}): {service.stderr()}")
        time.sleep(0.2)
    return False


def write_slowly(path, text, chunks=6, pause=0.4):
    step = len(text) // chunks + 1
    with open(path, "w") as fh:
        for i in range(0, len(text), step):
            fh.write(text[i:i + step])
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(pause)


def append_separately(path, text, chunks=5, pause=1.0):
    """Open, append, close; ``chunks`` times, ``pause`` s apart (network file systems, loggers):
    every close is a close-after-write event, and only the last one ends the file."""
    step = len(text) // chunks + 1
    for i in range(0, len(text), step):
        with open(path, "a") as fh:
            fh.write(text[i:i + step])
        if i + step < len(text):
            time.sleep(pause)


@pytest.mark.parametrize("poll", [False, True])
def test_watch_slow_appended_burst_broken_rename_backlog_restart(tiny_model, tmp_path, poll):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "backlog.gr").write_text(EXAMPLE)  # there before the service starts
    # longer than the appender's 1 s pauses, with room for a loaded machine
    extra = ["--settle", "2.5"] + (["--poll"] if poll else [])
    svc = Service(d, out, tiny_model, *extra)
    try:
        assert wait_for(lambda: len(outcomes(out)) == 1, service=svc)
        appender = threading.Thread(target=append_separately, args=(d / "appended.gr", EXAMPLE))
        appender.start()
        write_slowly(d / "slow.gr", EXAMPLE)  # never to be read half-written
        for i in range(4):  # a burst
            (d / f"burst{i}.gr").write_text(EXAMPLE)
        (d / "broken.gr").write_text("0 1\n0.1 2\nnot a number\n")
        tmp = d / ".incoming.tmp"  # an atomic writer: write a hidden temp file, rename into place
        tmp.write_text(EXAMPLE)
        os.replace(tmp, d / "renamed.gr")
        (d / "notes.md").write_text("not a PDF")
        appender.join()
        assert wait_for(lambda: len(outcomes(out)) == 9, service=svc)
    finally:
        stdout = svc.stop()
    names = [Path(r["path"]).name for r in outcomes(out)]
    assert sorted(names) == sorted({"backlog.gr", "slow.gr", "appended.gr", "burst0.gr", "burst1.gr", "burst2.gr",
                                    "burst3.gr", "broken.gr", "renamed.gr"}), names  # each exactly once
    recs = {Path(r["path"]).name: r for r in outcomes(out)}
    assert recs["broken.gr"]["status"] == "error" and (out / "broken.error.txt").exists()
    assert all(r["status"] == "ok" for n, r in recs.items() if n != "broken.gr")
    # the last line counts what was answered and what got an error report instead
    assert "9 file(s) processed: 8 answered, 1 with an error report" in stdout, stdout
    for stem in ("slow", "appended"):  # the whole file, not a prefix
        assert json.loads((out / f"{stem}.json").read_text())["data"]["source_points"] == EXAMPLE_POINTS
    assert not list(out.glob("*-2.*"))  # nothing done twice
    assert "appended.gr" in stdout and "Rwp" in stdout

    # a restart redoes nothing; a changed file is done again
    svc = Service(d, out, tiny_model, *extra)
    try:
        assert wait_for(lambda: "backlog:" in svc.stdout(), service=svc)
        assert "backlog: 9 file(s), 9 already done, 0 to check" in svc.stdout()  # broken.gr too; notes.md no PDF
        (d / "burst0.gr").write_text(EXAMPLE + "# re-measured\n")
        assert wait_for(lambda: len(outcomes(out)) == 10, service=svc)
    finally:
        stop_out = svc.stop()
    assert Path(outcomes(out)[-1]["path"]).name == "burst0.gr", stop_out
    assert (out / "burst0-2.json").exists() and (out / "burst0.json").exists()


def test_watch_survives_a_failing_file_and_gives_up_on_one_that_kills_it(tiny_model, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("crash.gr", "good.gr", "kill.gr"):
        (d / name).write_text(EXAMPLE)
    out = d / "cbldm-results"  # the default: inside the watched directory, never read back
    extra = ["--settle", "0.5"]

    def names(status=None):
        return [Path(r["path"]).name for r in journal(out) if status is None or r["status"] == status]

    # run 1: crash.gr raises, the service goes on; good.gr is done; kill.gr kills the process
    svc = Service(d, None, tiny_model, *extra, faulty=True)
    svc.proc.wait(timeout=120)
    assert svc.proc.returncode == -signal.SIGKILL, svc.stderr()
    assert names("error") == ["crash.gr"] and names("ok") == ["good.gr"] and names("started")[-1] == "kill.gr"
    report = (out / "crash.error.txt").read_text()
    assert "RuntimeError: injected fault" in report and "Traceback" in report
    assert "error: RuntimeError: injected fault (report: crash.error.txt)" in svc.stdout()

    # run 2: kill.gr once more (one crash may be a power cut)
    svc = Service(d, None, tiny_model, *extra, faulty=True)
    svc.proc.wait(timeout=120)
    assert svc.proc.returncode == -signal.SIGKILL, svc.stderr()
    assert names("started").count("kill.gr") == 2 and "kill.gr" not in names("error")

    # run 3: kill.gr has stopped the service twice: reported, not tried; new files still done
    svc = Service(d, None, tiny_model, *extra, faulty=True)
    try:
        assert wait_for(lambda: "kill.gr" in names("error"), service=svc)
        (d / "late.gr").write_text(EXAMPLE)
        assert wait_for(lambda: "late.gr" in names("ok"), service=svc)
    finally:
        svc.stop()
    assert names("started").count("kill.gr") == 2
    assert "the service stopped 2 times" in (out / "kill.error.txt").read_text()

    # run 4: nothing is retried, and the results folder was never taken for input
    svc = Service(d, None, tiny_model, *extra, faulty=True)
    try:
        assert wait_for(lambda: "backlog:" in svc.stdout(), service=svc)
    finally:
        svc.stop()
    assert "backlog: 4 file(s), 4 already done, 0 to check" in svc.stdout()
    assert sorted(set(names())) == ["crash.gr", "good.gr", "kill.gr", "late.gr"]
    assert len(outcomes(out)) == 4


def test_watch_refuses_results_in_the_watched_directory(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (tmp_path / "link").symlink_to(d)
    for out in (str(d), f"{d}/.", str(tmp_path / "link")):
        res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", str(d), "-o", out],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: -o ") and len(res.stderr.splitlines()) == 1, res.stderr
    assert list(d.iterdir()) == []  # no journal, nothing written


def test_watch_refuses_missing_directory(tiny_model, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", str(tmp_path / "nope"),
                          "--model", str(tiny_model)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("error:")


def test_a_fixed_file_is_answered_and_its_old_error_report_set_aside(tiny_model, tmp_path):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "late.gr").write_text("")
    svc = Service(d, out, tiny_model, "--settle", "0.5")
    try:
        assert wait_for(lambda: (out / "late.error.txt").exists(), service=svc)
        (d / "late.gr").write_text(EXAMPLE)
        assert wait_for(lambda: (out / "late.json").exists() and "answered now" in svc.stdout(), service=svc)
    finally:
        log = svc.stop()
    assert not (out / "late.error.txt").exists()
    assert "is empty" in (out / "late.error-superseded.txt").read_text()
    assert "late.gr: answered now; its earlier error report late.error.txt is now late.error-superseded.txt" in log
    assert [r["status"] for r in outcomes(out)] == ["error", "ok"]
    assert outcomes(out)[-1]["superseded_report"] == "late.error-superseded.txt"


def test_a_changed_file_s_earlier_answer_is_marked_and_a_second_watcher_refused(tiny_model, tmp_path):
    """A file answered, then rewritten (a writer that paused longer than --settle, or a new
    measurement under the same name): the new answer takes the next free name and the earlier
    JSON says it is superseded, by which answer; each answer names the content it is for. A second
    watcher on the same results folder would answer every file again: it is refused (exit 2)."""
    import hashlib

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    lines = EXAMPLE.splitlines(keepends=True)
    half = "".join(lines[: len(lines) // 2])     # cut at a line end: an answer, to r = 15 A
    (d / "s.gr").write_text(half)
    svc = Service(d, out, tiny_model, "--settle", "0.5")
    try:
        assert wait_for(lambda: (out / "s.json").exists(), service=svc)
        second = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", str(d), "-o", str(out),
                                 "--model", str(tiny_model)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: another cbldm-run watch writes its results to {out} (pid {svc.proc.pid}")
        (d / "s.gr").write_text(EXAMPLE)
        assert wait_for(lambda: (out / "s-2.json").exists() and "marked superseded" in svc.stdout(), service=svc)
    finally:
        log = svc.stop()
    first, now = json.loads((out / "s.json").read_text()), json.loads((out / "s-2.json").read_text())
    assert first["superseded_by"] == "s-2.json" and "superseded_by" not in now
    assert first["source_sha256"] == hashlib.sha256(half.encode()).hexdigest()
    assert now["source_sha256"] == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert "s.gr: answered again (its content changed); s.json is marked superseded by s-2.json" in log
    assert outcomes(out)[-1]["superseded_answer"] == "s.json"


def test_once_answers_the_folder_and_exits_and_a_second_signal_stops_in_a_file(tiny_model, tmp_path):
    """--once: a batch over a folder (exit 1 where a file got an error report, 0 when nothing was
    left to do). A second SIGTERM stops in the middle of a long file at once (exit 130); that file
    is answered at the next start and its interrupted run is not counted as a crash."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("good.gr", "slow.gr"):
        (d / name).write_text(EXAMPLE)
    out = d / "cbldm-results"
    svc = Service(d, None, tiny_model, "--settle", "0.3", faulty=True, env={**os.environ, "CBLDM_TEST_SLOW": "1"})
    try:
        assert wait_for(lambda: "slow.gr" in [Path(r["path"]).name for r in journal(out)
                                              if r["status"] == "started"], service=svc)
        time.sleep(0.5)
        svc.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stopping after slow.gr" in svc.stdout(), timeout=20, service=svc)
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(timeout=20)
    finally:
        if svc.alive():
            svc.proc.kill()
    assert svc.proc.returncode == 130 and time.monotonic() - t0 < 10, svc.stderr()
    assert "stopped in slow.gr: it is answered at the next start" in svc.stdout()
    assert "Traceback" not in svc.stderr(), svc.stderr()
    assert journal(out)[-1]["status"] == "retry" and Path(journal(out)[-1]["path"]).name == "slow.gr"

    # a batch, twice: everything left is answered (crash.gr with its report: exit 1), then nothing is left
    (d / "crash.gr").write_text(EXAMPLE)
    for expect in (1, 0):
        run = subprocess.run([sys.executable, "-c", FAULTY, "watch", str(d), "--model", str(tiny_model), "-k", "1",
                              "--no-plot", "--refine", "0", "--settle", "0.3", "--interval", "0.3", "--once"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == expect, run.stdout + run.stderr
    done = {Path(r["path"]).name: r["status"] for r in outcomes(out)}
    assert done == {"crash.gr": "error", "good.gr": "ok", "slow.gr": "ok"}
    assert "backlog: 3 file(s), 3 already done, 0 to check" in run.stdout


def test_watch_help_lists_the_suffixes_it_takes():
    from cbldm.runtime.watch import PDF_SUFFIXES

    res = subprocess.run([sys.executable, "-m", "cbldm.runtime.cli_run", "watch", "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    line = next(l for l in res.stdout.splitlines() if "Files taken:" in l)
    assert line.split("Files taken:")[1].split("(")[0].split() == sorted(PDF_SUFFIXES)


def test_a_file_changed_between_its_hash_and_its_read_is_answered_once(tiny_model, tmp_path):
    """The journal holds the content the answer is for, not the one hashed before the read."""
    import hashlib

    d = tmp_path / "in"
    d.mkdir()
    (d / "swap.gr").write_text(EXAMPLE)
    run = subprocess.run([sys.executable, "-c", FAULTY, "watch", str(d), "--model", str(tiny_model), "-k", "1",
                          "--no-plot", "--refine", "0", "--settle", "0.3", "--interval", "0.3", "--once"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = d / "cbldm-results"
    now = hashlib.sha256((d / "swap.gr").read_bytes()).hexdigest()
    assert [r["sha256"] for r in outcomes(out)] == [now]
    assert json.loads((out / "swap.json").read_text())["source_sha256"] == now
    assert not (out / "swap-2.json").exists()


def test_once_reports_a_file_it_cannot_read_that_was_there_before_it_started(tmp_path, monkeypatch):
    """A backlog file that cannot be read (permissions; root reads anything, so the read is made
    to fail) was passed over without a word; --once now reports it and exits 1."""
    from cbldm.runtime import watch

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "good.gr").write_text(EXAMPLE)
    (d / "noread.gr").write_text(EXAMPLE)
    real = watch.sha256_file

    def denied(p):
        if Path(p).name == "noread.gr":
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(watch, "sha256_file", denied)
    lines = []
    w = watch.Watcher(d, out, lambda p: ("ok", {"outputs": []}),
                      watch.WatchConfig(interval=0.2, settle=0.2, once=True), lines.append)
    assert w.run(install_signals=False, max_seconds=60) == 1
    assert any("noread.gr: cannot be read (Permission denied)" in l for l in lines), lines
    assert "cannot be read" in (out / "noread.error.txt").read_text()
    assert [Path(r["path"]).name for r in outcomes(out)] == ["good.gr"]


def test_a_link_to_a_missing_file_is_said_not_passed_over(tmp_path):
    """A dangling symlink in the folder (a mount not up, a target moved) was skipped without a
    word, in the backlog and when it appeared. Now: said once; with --once an error report and
    exit 1; the good file beside it is answered."""
    from cbldm.runtime import watch

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    (d / "good.gr").write_text(EXAMPLE)
    (d / "gone.gr").symlink_to(tmp_path / "nowhere.gr")
    lines = []
    w = watch.Watcher(d, out, lambda p: ("ok", {"outputs": []}),
                      watch.WatchConfig(interval=0.2, settle=0.2, once=True), lines.append)
    assert w.run(install_signals=False, max_seconds=60) == 1
    said = [l for l in lines if "gone.gr: a link to" in l]
    assert len(said) == 1 and "nowhere.gr, which does not exist" in said[0], lines
    assert "does not exist" in (out / "gone.error.txt").read_text()
    assert [Path(r["path"]).name for r in outcomes(out)] == ["good.gr"]

    # a service: a warning, once, however often the link is seen; no report, no failure
    lines.clear()
    (d / "late.gr").symlink_to(tmp_path / "later.gr")
    w = watch.Watcher(d, tmp_path / "out2", lambda p: ("ok", {"outputs": []}),
                      watch.WatchConfig(interval=0.2, settle=0.2), lines.append)
    w._backlog()
    w._note(d / "late.gr")
    w._drain_ready()
    assert sum("late.gr: a link to" in l for l in lines) == 1, lines
    assert all(l.startswith("warning") for l in lines if "a link to" in l)
    assert w.failed == 0 and not list((tmp_path / "out2").glob("*.error.txt"))
    # a loop of links does not take the service down; said as such
    (d / "loop.gr").symlink_to(d / "loop.gr")
    w._note(d / "loop.gr")
    w._drain_ready()
    assert any("loop.gr: a link to" in l and "cannot be followed" in l for l in lines), lines
    w._lock.close()
