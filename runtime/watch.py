"""``cbldm-run watch``: process every new PDF in a directory once, soon after it is complete.

- Local disks: inotify (watchdog) close-after-write and rename-into events mark a file as
  finished. Network file systems (``--poll``): inotify sees nothing there, so the directory
  is polled and a file is taken once its size and mtime have held still for ``settle`` s.
  Either way the data block must parse completely; a file that fails to parse while it is
  still changing is tried again later.
- On start the backlog (files not in the journal) is processed.
- ``OUTDIR/.cbldm-journal.jsonl`` records each file done (path, size, mtime, sha256, status,
  outputs); a file is redone only if its content changes. Appends are fsync'ed after the
  results are written, so a crash can repeat a file but never lose one.
- A bad file gets ``<stem>.error.txt`` beside the results and the service carries on.
- SIGINT/SIGTERM finish the file in hand and stop cleanly.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cbldm.runtime.fileutil import sha256_file
from cbldm.runtime.pdfio import PDFInputError

PDF_SUFFIXES = {".gr", ".dat", ".txt", ".csv", ".xy", ".fgr"}
JOURNAL = ".cbldm-journal.jsonl"
QUIET_FALLBACK = 5.0  # s: inotify mode, files that never see a close event (the backlog)


def is_candidate(path: Path) -> bool:
    name = path.name
    return (path.suffix.lower() in PDF_SUFFIXES and not name.startswith(".")
            and not name.endswith(("~", ".tmp", ".part", ".swp")))


class Journal:
    def __init__(self, outdir: Path):
        self.path = outdir / JOURNAL
        self.done: dict[str, str] = {}  # resolved path -> sha256 of the content processed
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: that file is simply redone
                self.done[rec["path"]] = rec["sha256"]

    def seen(self, path: Path, digest: str) -> bool:
        return self.done.get(str(path.resolve())) == digest

    def add(self, path: Path, digest: str, record: dict) -> None:
        rec = {"path": str(path.resolve()), "sha256": digest, **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[rec["path"]] = digest


@dataclass
class WatchConfig:
    poll: bool = False
    interval: float = 1.0     # polling period, and how often pending files are re-checked
    settle: float = 2.0       # --poll: size and mtime unchanged this long
    retry_for: float = 600.0  # give up on a file that keeps failing to parse while changing


class Watcher:
    """Drives ``handle(path) -> (status, record)``; see ``cli_run.watch`` for the real handler."""

    def __init__(self, directory: Path, outdir: Path, handle: Callable[[Path], tuple[str, dict]],
                 cfg: WatchConfig, log=print):
        self.dir, self.outdir, self.handle, self.cfg, self.log = Path(directory), Path(outdir), handle, cfg, log
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.outdir)
        self.events: queue.Queue[tuple[Path, bool]] = queue.Queue()  # (path, writer finished?)
        self.pending: dict[Path, dict] = {}  # path -> {"since", "size", "mtime", "first"}
        self.stop = threading.Event()
        self.processed = 0

    # -- events ---------------------------------------------------------------------------
    def _observer(self):
        from watchdog.events import FileSystemEventHandler

        q = self.events

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):  # IN_CLOSE_WRITE: the writer is done
                if not event.is_directory:
                    q.put((Path(event.src_path), True))

            def on_moved(self, event):  # renamed into place (atomic writers): complete
                if not event.is_directory:
                    q.put((Path(event.dest_path), True))

            def on_created(self, event):  # still being written: wait for close
                if not event.is_directory:
                    q.put((Path(event.src_path), False))

            def on_modified(self, event):
                if not event.is_directory:
                    q.put((Path(event.src_path), False))

        if self.cfg.poll:
            from watchdog.observers.polling import PollingObserver

            obs = PollingObserver(timeout=self.cfg.interval)
        else:
            from watchdog.observers import Observer

            obs = Observer()
        obs.schedule(Handler(), str(self.dir), recursive=False)
        return obs

    def _backlog(self) -> None:
        for p in sorted(self.dir.iterdir()):
            if p.is_file() and is_candidate(p):
                # nobody may be writing it, or a writer may still be: let it settle first
                self.events.put((p, False))

    # -- the loop ---------------------------------------------------------------------------
    def run(self, install_signals: bool = True, max_seconds: float | None = None) -> int:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop.set())
        obs = self._observer()
        obs.start()
        self._backlog()
        self.log(f"watching {self.dir} ({'polling' if self.cfg.poll else 'inotify'}), results in {self.outdir}")
        t_end = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop.is_set():
                if t_end is not None and time.monotonic() > t_end:
                    break
                try:
                    p, finished = self.events.get(timeout=self.cfg.interval / 2)
                    if is_candidate(p):
                        st = self.pending.setdefault(p, {"first": time.monotonic(), "closed": False})
                        # a new write after a close re-opens the file
                        st["closed"] = finished or (st["closed"] and _unchanged(p, st.get("sig")))
                except queue.Empty:
                    pass
                self._drain_ready()
        finally:
            obs.stop()
            obs.join(timeout=5)
        self.log(f"stopped; {self.processed} file(s) processed")
        return 0

    def _drain_ready(self) -> None:
        now = time.monotonic()
        for p in list(self.pending):
            if self.stop.is_set():
                return
            st = self.pending[p]
            try:
                stat = p.stat()
            except FileNotFoundError:
                del self.pending[p]  # moved away or deleted before we got to it
                continue
            sig = (stat.st_size, stat.st_mtime_ns)
            if st.get("sig") != sig:
                st["sig"], st["since"] = sig, now
            if self.cfg.poll and now - st["since"] < self.cfg.settle:
                continue  # still growing, or not yet quiet long enough
            if not self.cfg.poll and not st["closed"] and now - st["since"] < max(self.cfg.settle, QUIET_FALLBACK):
                # inotify: wait for close-after-write or a rename; a file no one closes
                # (backlog, hard link) is taken after a long quiet period
                continue
            self._try(p, st, now)

    def _try(self, p: Path, st: dict, now: float) -> None:
        try:
            digest = sha256_file(p)
        except OSError:
            return
        if self.journal.seen(p, digest):
            del self.pending[p]
            return
        try:
            status, record = self.handle(p)
        except PDFInputError as exc:
            # half-written files fail to parse; wait while the file still changes
            still_changing = now - st["since"] < self.cfg.settle or _changed(p, st["sig"])
            if still_changing and now - st["first"] < self.cfg.retry_for:
                return
            status, record = "error", {"error": str(exc)}
            self._report_error(p, str(exc))
        except Exception as exc:  # never let one file take the service down
            status, record = "error", {"error": f"{type(exc).__name__}: {exc}"}
            self._report_error(p, record["error"])
        self.journal.add(p, digest, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     **record})
        self.processed += 1
        del self.pending[p]

    def _report_error(self, p: Path, message: str) -> None:
        from cbldm.runtime.results import write_error

        target = write_error(self.outdir, p, f"error: {message}")
        self.log(f"error: {' '.join(message.split())} (report: {target.name})")


def _unchanged(p: Path, sig) -> bool:
    return sig is not None and not _changed(p, sig)


def _changed(p: Path, sig) -> bool:
    try:
        stat = p.stat()
    except FileNotFoundError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != sig
