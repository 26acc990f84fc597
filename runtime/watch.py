"""``cbldm-run watch``: process every new PDF in a directory once, after it is complete.

- A file is complete when its size and mtime have not changed for ``settle`` seconds, in
  both modes. No file-system event says "the writer is done": a close-after-write comes
  after every one of several separate appends (network file systems, loggers, some
  instrument software), and on a network file system inotify sees nothing at all. So the
  events (inotify, or ``--poll``'s directory scans) only wake the check. The settle time
  must be longer than the longest pause of any writer.
- On start the backlog (every candidate file not in the journal with its current content)
  is processed; one log line says how much there is.
- ``OUTDIR/.cbldm-journal.jsonl`` records each file done (path, sha256, status, outputs); a
  file is redone only if its content changes. Before a file is handed to the predictor a
  ``started`` record is written and fsync'ed; a file left started by ``max_attempts``
  consecutive runs (it crashed or hung the service each time) is reported as failed and not
  tried again until its content changes.
- A bad file, or any exception while processing one, gets ``<stem>.error.txt`` beside the
  results and the service carries on. Once the file is fixed and answered, that report is
  renamed ``<stem>.error-superseded.txt`` (kept, and no longer read as the file's state).
- Only DIR itself is watched, not its subfolders, so results in a subfolder (the default,
  ``DIR/cbldm-results``) are never read back; ``OUTDIR`` equal to ``DIR`` is refused.
- A file answered again once its content changed (rewritten, or first answered while a writer
  paused longer than ``settle``): the earlier answer's JSON gets ``superseded_by`` (the newer
  answer's JSON); every answer's JSON holds ``source_sha256``, the content it answers.
- One watcher per results folder (a lock on ``OUTDIR/.cbldm-watch.lock``): a second is refused.
- SIGINT/SIGTERM finish the file in hand and stop cleanly; a second one stops at once (exit
  130), and the file in hand is answered at the next start (not counted as a crash).
- ``once``: the files there and those arriving meanwhile are answered, then the service exits
  (1 if one got an error report): a batch over a folder, a cron job.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cbldm.runtime.fileutil import sha256_file
from cbldm.runtime.pdfio import PDFInputError

PDF_SUFFIXES = {".gr", ".dat", ".txt", ".csv", ".xy", ".fgr"}
JOURNAL = ".cbldm-journal.jsonl"
STARTED = "started"            # handed to the predictor, no outcome yet
DONE = ("ok", "error")         # outcomes: this content is not processed again
RETRY = "retry"                # the file changed while it was read: not done, not a crash


class WatchUsageError(ValueError):
    """The directories make no sense together (the CLI's exit code 2)."""


def is_candidate(path: Path) -> bool:
    name = path.name
    return (path.suffix.lower() in PDF_SUFFIXES and not name.startswith(".")
            and not name.endswith(("~", ".tmp", ".part", ".swp")))


def check_dirs(directory: Path, outdir: Path) -> None:
    """Results written into the watched directory would be read as new PDFs (``.fit.gr``,
    ``.error.txt``) and those results again, without end. Subfolders are not watched."""
    if Path(directory).resolve() == Path(outdir).resolve():
        raise WatchUsageError(f"-o {outdir} is the watched directory: its results would be read as input; "
                              "use a subfolder (default DIR/cbldm-results) or another directory")


class Journal:
    def __init__(self, outdir: Path):
        self.path = outdir / JOURNAL
        self.done: dict[str, str] = {}  # resolved path -> sha256 of the content processed
        # (path, sha256) -> runs in a row that started this content and never finished it
        self.started: dict[tuple[str, str], int] = {}
        self.reports: dict[str, str] = {}  # resolved path -> its last outcome's error report
        self.answers: dict[str, str] = {}  # resolved path -> the JSON of its last answer

        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: that file is simply redone
                self._apply(rec)

    def _apply(self, rec: dict) -> None:
        key = (rec["path"], rec["sha256"])
        status = rec.get("status")
        if status == STARTED:
            self.started[key] = self.started.get(key, 0) + 1
            return
        if status == RETRY:     # that run ended without a crash (interrupted, or the file changed);
            # the crashes before it still count
            left = self.started.get(key, 0) - 1
            if left > 0:
                self.started[key] = left
            else:
                self.started.pop(key, None)
            return
        self.started.pop(key, None)
        if status == "error" and rec.get("report"):
            self.reports[rec["path"]] = rec["report"]
        elif status in DONE:
            self.reports.pop(rec["path"], None)
        if status == "ok" and _answer(rec):
            self.answers[rec["path"]] = _answer(rec)
        if status in DONE or status is None:  # journals before 'started' existed hold outcomes only
            self.done[rec["path"]] = rec["sha256"]

    def seen(self, path: Path, digest: str) -> bool:
        return self.done.get(str(path.resolve())) == digest

    def attempts(self, path: Path, digest: str) -> int:
        return self.started.get((str(path.resolve()), digest), 0)

    def add(self, path: Path, digest: str, record: dict) -> None:
        rec = {"path": str(path.resolve()), "sha256": digest, **record}
        # fsync'ed before anything else happens: an outcome after the results are written (a
        # crash can repeat a file, never lose one), 'started' before the predictor runs
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._apply(rec)


@dataclass
class WatchConfig:
    poll: bool = False
    interval: float = 1.0     # polling period, and how often pending files are re-checked
    settle: float = 2.0       # size and mtime unchanged this long: the file is complete
    retry_for: float = 600.0  # give up on a file that keeps failing to parse while changing
    max_attempts: int = 2     # runs a file may leave unfinished (crashed, killed) before it is failed
    once: bool = False        # answer what is there (and what arrives meanwhile), then exit


class Watcher:
    """Drives ``handle(path) -> (status, record)``; see ``cli_run.watch`` for the real handler."""

    def __init__(self, directory: Path, outdir: Path, handle: Callable[[Path], tuple[str, dict]],
                 cfg: WatchConfig, log=print, lock=None):
        check_dirs(directory, outdir)
        self.dir, self.outdir, self.handle, self.cfg, self.log = Path(directory), Path(outdir), handle, cfg, log
        self._real_dir = self.dir.resolve()
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._lock = lock if lock is not None else take_lock(self.outdir)   # taken by the caller, or here
        self.journal = Journal(self.outdir)
        self.events: queue.Queue[Path] = queue.Queue()  # something happened to this file: look again
        self.pending: dict[Path, dict] = {}  # path -> {"first", "sig", "since"}
        self.stop = threading.Event()
        self.processed = 0
        self.failed = 0       # of them, answered with an error report instead of a result
        self._in_hand: Path | None = None   # the file handed to the predictor now
        self._dangling_seen: set[tuple[str, str]] = set()   # links to nothing, already said

    # -- events ---------------------------------------------------------------------------
    def _observer(self):
        from watchdog.events import FileSystemEventHandler

        q = self.events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                # created, modified, closed, moved in: all only mean "look at it again"
                if event.is_directory:
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    if p:
                        q.put(Path(os.fsdecode(p)))

        if self.cfg.poll:
            from watchdog.observers.polling import PollingObserver

            obs = PollingObserver(timeout=self.cfg.interval)
        else:
            from watchdog.observers import Observer

            obs = Observer()
        # not recursive: results in a subfolder of the watched directory are never inputs
        obs.schedule(Handler(), str(self.dir), recursive=False)
        return obs

    def _backlog(self) -> None:
        entries = sorted(self.dir.iterdir())
        for p in entries:
            if is_candidate(p) and p.is_symlink() and not p.exists():
                self._dangling(p)
        files = [p for p in entries if p.is_file() and is_candidate(p)]
        done = 0
        for p in files:
            try:
                if self.journal.seen(p, sha256_file(p)):
                    done += 1
                    continue
            except OSError:
                pass    # unreadable: tried like any other (--once reports it), not passed over
            self._note(p)  # nobody may be writing it, or a writer may still be: let it settle
        self.log(f"backlog: {len(files)} file(s), {done} already done, {len(files) - done} to check")

    def _note(self, p: Path) -> None:
        # a rename's destination may lie outside the directory
        if is_candidate(p) and p.parent.resolve() == self._real_dir:
            # one key per file, however the event spelled its path
            self.pending.setdefault(self.dir / p.name, {"first": time.monotonic()})

    # -- the loop ---------------------------------------------------------------------------
    def _on_signal(self, *_) -> None:
        if self.stop.is_set():      # the second one: now (a long fit need not be waited for)
            raise KeyboardInterrupt
        self.stop.set()
        if self._in_hand is not None:
            # os.write, not print: the signal may have come in the middle of a print
            os.write(1, f"{time.strftime('%H:%M:%S')} stopping after {self._in_hand.name} "
                        "(signal again to stop now)\n".encode(errors="replace"))

    def run(self, install_signals: bool = True, max_seconds: float | None = None) -> int:
        """0, or with ``once`` 1 where a file got an error report; 130 when stopped in a file."""
        handlers = {}
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        obs = self._observer()
        obs.start()  # before the backlog scan, so nothing written meanwhile is missed
        t_end = None if max_seconds is None else time.monotonic() + max_seconds
        code = 0
        try:
            self.log(f"watching {self.dir} ({'polling' if self.cfg.poll else 'inotify'}), results in "
                     f"{self.outdir}, a file is taken {self.cfg.settle:g} s after its last change")
            self._backlog()
            while not self.stop.is_set():
                if t_end is not None and time.monotonic() > t_end:
                    break
                try:
                    self._note(self.events.get(timeout=self.cfg.interval / 2))
                    while True:  # a burst of events: take them all before checking
                        self._note(self.events.get_nowait())
                except queue.Empty:
                    pass
                self._drain_ready()
                if self.cfg.once and not self.pending and self.events.empty():
                    code = 1 if self.failed else 0
                    break
        except KeyboardInterrupt:    # the second signal (``_on_signal``); ``_try`` journalled the file in hand
            code = 130
        finally:
            for sig in handlers:    # the few seconds of shutdown are not interrupted again
                signal.signal(sig, signal.SIG_IGN)
            # watchdog logs a race of its own shutdown ('queue_events() called when the thread is
            # inactive') as an error; nothing is lost by then
            import logging

            wd = logging.getLogger("watchdog.observers.inotify")
            level = wd.level
            wd.setLevel(logging.CRITICAL)
            obs.stop()
            obs.join(timeout=5)
            wd.setLevel(level)
            for sig, before in handlers.items():
                signal.signal(sig, before)
        self.log(f"stopped; {self.processed} file(s) processed: {self.processed - self.failed} answered, "
                 f"{self.failed} with an error report")
        if self._lock is not None:
            self._lock.seek(0)     # no 'pid N' of a process that has gone
            self._lock.truncate()
            self._lock.close()     # the lock goes with it
        return code

    def _drain_ready(self) -> None:
        for p in list(self.pending):
            if self.stop.is_set():
                return
            now = time.monotonic()
            st = self.pending[p]
            try:
                stat = p.stat()
            except OSError:
                del self.pending[p]  # moved away or deleted before we got to it
                if p.is_symlink():   # or a link to nothing, or a loop of links
                    self._dangling(p)
                continue
            if self._dangling_seen:   # a link mended: said again should it break again
                self._dangling_seen = {k for k in self._dangling_seen if k[0] != p.name}
            sig = (stat.st_size, stat.st_mtime_ns)
            if st.get("sig") != sig:
                st["sig"], st["since"] = sig, now
            if now - st["since"] < self.cfg.settle:
                continue  # still being written, or not quiet long enough to tell
            self._try(p, st, now)

    def _dangling(self, p: Path) -> None:
        """A link whose target is gone (a mount not up, a file moved) had been passed over without
        a word. Said once per link and target; with ``once`` an error report, as for a file that
        cannot be read. A service answers it once the link is touched again, or at its next start,
        if the target is there by then (a target appearing elsewhere sends no event here)."""
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        if (p.name, target) in self._dangling_seen:
            return
        self._dangling_seen.add((p.name, target))
        why = "which does not exist"
        try:
            os.stat(p)
        except FileNotFoundError:
            pass
        except OSError as exc:   # a loop of links
            why = f"which cannot be followed ({exc.strerror or exc})"
        msg = f"{p.name}: a link to {target}, {why}; not answered"
        if self.cfg.once:
            from cbldm.runtime.results import write_error

            report = write_error(self.outdir, p, f"error: {msg}")
            self.log(f"error: {msg} (report: {report.name})")
            self.processed += 1
            self.failed += 1
        else:
            self.log(f"warning: {msg} (answered at the next start, or when the link is made again, "
                     "if its target is there by then)")

    def _try(self, p: Path, st: dict, now: float) -> None:
        try:
            digest = sha256_file(p)
        except OSError as exc:
            if self.cfg.once:   # a service looks again; a run that ends says so and goes on
                if not isinstance(exc, FileNotFoundError):
                    from cbldm.runtime.results import write_error

                    msg = f"{p.name}: cannot be read ({exc.strerror or exc})"
                    target = write_error(self.outdir, p, f"error: {msg}")
                    self.log(f"error: {msg} (report: {target.name})")
                    self.processed += 1
                    self.failed += 1
                del self.pending[p]
            return
        if self.journal.seen(p, digest):
            del self.pending[p]
            return
        tries = self.journal.attempts(p, digest)
        if tries >= self.cfg.max_attempts:
            msg = (f"{p.name}: the service stopped {tries} times while processing this file (crash or kill); "
                   "not tried again until the file changes")
            self._finish(p, digest, "error", {"error": msg}, msg)
            return
        self.journal.add(p, digest, {"status": STARTED, "time": _now()})
        self._in_hand = p   # named by the signal handler
        try:
            status, record = self.handle(p)
        except KeyboardInterrupt:
            # stopped by hand, not a crash: the file is taken again at the next start, and this
            # run does not count towards the attempts that fail it
            self.journal.add(p, digest, {"status": RETRY, "time": _now(), "why": "interrupted"})
            self.log(f"stopped in {p.name}: it is answered at the next start")
            raise
        except PDFInputError as exc:
            # a file that changed while it was read failed because of that, not for good
            if _changed(p, st["sig"]) and now - st["first"] < self.cfg.retry_for:
                self.journal.add(p, digest, {"status": RETRY, "time": _now()})
                return
            self._finish(p, digest, "error", {"error": str(exc)}, str(exc))
            return
        except Exception as exc:  # never let one file take the service down
            msg = f"{type(exc).__name__}: {exc}"
            self._finish(p, digest, "error", {"error": msg}, msg, traceback.format_exc())
            return
        finally:
            self._in_hand = None
        # the predictor reads the file again: where it changed after it was hashed, the journal
        # holds the content answered, so that this content is not answered a second time
        answered = record.pop("answered_sha256", None) or digest
        if answered != digest:     # the run started for the content hashed ended, not crashed
            self.journal.add(p, digest, {"status": RETRY, "time": _now(), "why": "changed while read"})
        self._finish(p, answered, status, record)

    def _finish(self, p: Path, digest: str, status: str, record: dict, error: str | None = None,
                detail: str = "") -> None:
        if error is not None:
            from cbldm.runtime.results import write_error

            target = write_error(self.outdir, p, f"error: {error}\n{detail}")
            self.log(f"error: {' '.join(error.split())} (report: {target.name})")
            record = {**record, "report": target.name}
        old = self.journal.reports.get(str(p.resolve())) if error is None else None
        if old and (self.outdir / old).exists():
            # the file was fixed: its report says what was wrong then, beside results that say
            # it is fine now; kept under a name that says so
            from cbldm.runtime.results import free_stem

            kept = ".error-superseded.txt"
            new = self.outdir / f"{free_stem(self.outdir, old[:-len('.error.txt')], (kept,))}{kept}"
            os.replace(self.outdir / old, new)
            self.log(f"{p.name}: answered now; its earlier error report {old} is now {new.name}")
            record = {**record, "superseded_report": new.name}
        before = self.journal.answers.get(str(p.resolve())) if status == "ok" else None
        answer = _answer(record)
        if before and answer and before != answer \
                and _mark_superseded(self.outdir / before, answer, self.journal.done.get(str(p.resolve()))):
            # the file changed (rewritten, or answered half-written): the earlier answer keeps its
            # files, and says in its JSON that it is not the answer to the file as it is now
            self.log(f"{p.name}: answered again (its content changed); {before} is marked superseded by {answer}")
            record = {**record, "superseded_answer": before}
        self.journal.add(p, digest, {"status": status, "time": _now(), **record})
        self.processed += 1
        self.failed += status == "error"
        del self.pending[p]


LOCK = ".cbldm-watch.lock"


def _answer(record: dict) -> str | None:
    """The JSON among an outcome's outputs: the file that says what the answer is."""
    return next((o for o in record.get("outputs", ()) if o.endswith(".json")), None)


def take_lock(outdir: Path):
    """One watcher per results folder: two would both answer every file and could pick the same
    free name for their results. An exclusive lock on OUTDIR/.cbldm-watch.lock, held while the
    service runs (released by the system if it dies); None where the system or the file system has
    no flock. A WatchUsageError where another process holds it."""
    try:
        import fcntl
    except ImportError:     # not POSIX: no lock, as before
        return None
    import errno

    try:
        fh = open(outdir / LOCK, "a+")
    except OSError as exc:
        raise WatchUsageError(f"{outdir / LOCK}: cannot be opened ({exc.strerror or exc}); give another -o") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # a file system without locks (NFS without lockd, some SMB mounts): run unlocked, as before
            fh.close()
            return None
        fh.seek(0)
        who = fh.read().strip()
        fh.close()
        raise WatchUsageError(f"another cbldm-run watch writes its results to {outdir}"
                              + (f" ({who})" if who else "") + "; stop it, or give another -o") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}, since {_now()}\n")
    fh.flush()
    return fh


def _mark_superseded(path: Path, by: str, digest: str | None) -> bool:
    """The earlier answer's JSON, rewritten with ``superseded_by`` (the newer answer's JSON) and
    when, if it is the answer to the content ``digest`` (the file's previous sha256: results
    deleted since, another input's answer may hold the name now); False where it is not, or is
    gone, unreadable or cannot be written (nothing marked, and the service goes on)."""
    from cbldm.runtime.fileutil import atomic_write_text

    try:
        doc = json.loads(path.read_text())
        if digest is None or doc.get("source_sha256") != digest:
            return False
        doc["superseded_by"] = by
        doc["superseded_at"] = _now()
        atomic_write_text(path, json.dumps(doc, indent=1))
    except (OSError, ValueError):
        return False
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _changed(p: Path, sig) -> bool:
    try:
        stat = p.stat()
    except FileNotFoundError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != sig
