"""cbldm-run: structures from PDF files at the beamline (numpy, scipy, onnxruntime; no torch)."""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import EXIT_INPUT, EXIT_USAGE, fail, refine_config, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Predict nanoparticle structures from PDFs with an exported CbLDM model.")

MODEL_HELP = "Exported model directory (default: the shipped model)."


def _model_dir(model: Optional[Path]) -> Path:
    if model is not None:
        return model
    from cbldm.models import default_model_dir

    return default_model_dir()


def _check_backend(backend: str, precision: str) -> None:
    # a value no model could satisfy is a usage error, whatever the model directory holds
    from cbldm.runtime.backends import BACKENDS, PRECISIONS

    if backend not in BACKENDS:
        raise fail(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}", EXIT_USAGE)
    if precision not in PRECISIONS:
        raise fail(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}", EXIT_USAGE)


def _open(model: Optional[Path], backend: str, precision: str, threads: Optional[int]):
    from cbldm.runtime.backends import ModelError, load_model

    _check_backend(backend, precision)
    try:
        return load_model(_model_dir(model), backend=backend, precision=precision, threads=threads)
    except ModelError as exc:
        raise fail(str(exc))


def _sampler(m, t1: Optional[int], t2: Optional[int], steps_before: Optional[int], steps_after: Optional[int]):
    from cbldm.runtime.sampling import SamplerConfig

    cfg = dict(m.manifest["sampler"])
    for k, v in (("t1", t1), ("t2", t2), ("steps_before", steps_before), ("steps_after", steps_after)):
        if v is not None:
            cfg[k] = v
    try:
        sc = SamplerConfig(**cfg)
        if sc.t1 is not None and not (0 <= sc.t2 <= sc.t1 <= 999):
            raise ValueError(f"need 0 <= t2 <= t1 <= 999, got t1={sc.t1}, t2={sc.t2}")
        if sc.steps_before < 0 or sc.steps_after < 0:
            raise ValueError(f"U-Net calls cannot be negative, got --steps-before {sc.steps_before}, "
                             f"--steps-after {sc.steps_after}")
        return sc
    except (TypeError, ValueError) as exc:
        raise fail(f"sampler settings: {exc}", EXIT_USAGE)


BACKEND_HELP = ("auto (tensorrt, cuda, cpu: the first that runs the model), tensorrt, cuda or cpu; "
                "the one used is reported.")
PRECISION_HELP = ("fp32 or fp16 graphs (fp16: a model exported with --fp16; a graph whose fp16 version "
                  "failed its parity check runs fp32, and the report says so).")

REFINE_HELP = ("Refine the coordinates of the best N candidates against the PDF (0: off, and no "
               "strain, library-family walk, atom-count or facet-layer search, nor a second fit above a "
               "peak of another element: the structures as the networks and library gave them).")


SOURCE_HELP = ("Where candidates come from: both (default), model (the networks) or library "
               "(the shipped cluster library alone).")
QMIN_HELP = ("Qmin of the data (1/A; default: the file's header 'qmin', else fitted with the best first "
             "candidate, 0-2, and checked with the answer).")
QMAX_HELP = ("Qmax of the data (1/A; default: the file's header 'qmax', else read off the data where its "
             "content in Q ends, else 25).")
RMIN_HELP = ("Fit from this r (A; default 1.5, and fitted again from above a peak the fit leaves where no two "
             "metal atoms are: a ligand's or oxide's bonds; a value given here stands).")
RMAX_HELP = "Fit up to this r (A; default: the file's last r)."
QDAMP_HELP = ("Instrument resolution Qdamp (1/A) from a calibrant (Ni, CeO2): held in the fit (default: "
              "the file's header 'qdamp', else refined per candidate, where it trades off against size).")


# the options predict and watch share (one definition: typer reads a default OptionInfo as is)
CANDIDATES = typer.Option(4, "--candidates", "-k", help="Samples from the networks per PDF (the library adds its "
                                                        "best matches).")
ELEMENT = typer.Option(None, help="The particle's metal (default: the most abundant metal of each file's 'composition', "
                                   "else Au).")
BACKEND = typer.Option("auto", help=BACKEND_HELP)
PRECISION = typer.Option("fp32", help=PRECISION_HELP)
SEED = typer.Option(0, min=0, help="Sampling seed (0 or more).")
THREADS = typer.Option(None, min=1, help="CPU threads for ONNX Runtime, and candidates refined side by side "
                                         "(default: ONNX Runtime's own; the cores, at most 4).")
PLOT = typer.Option(True, help="Write <stem>.png.")
REFINE = typer.Option(4, "--refine", help=REFINE_HELP)
REFINE_ITER = typer.Option(100, help="L-BFGS iterations of the refinement.")
DISORDER = typer.Option(True, help="Also refine with part of Biso left to the coordinates (static disorder: "
                                   "thermal displacements, relaxation); --no-disorder for a particle known "
                                   "to be ordered, or to compare.")
SOURCE = typer.Option("both", help=SOURCE_HELP)
QMIN = typer.Option(None, help=QMIN_HELP)
QMAX = typer.Option(None, help=QMAX_HELP)
RMIN = typer.Option(None, help=RMIN_HELP)
RMAX = typer.Option(None, help=RMAX_HELP)
QDAMP = typer.Option(None, help=QDAMP_HELP)


def _physics(source: str, qmin, qmax, rmin, rmax, qdamp=None) -> dict:
    """--source and the physics overrides: a bad value is a usage error (exit 2)."""
    from cbldm.runtime.fitting import MAX_QMAX, MIN_QMAX, QDAMP_RANGE
    from cbldm.runtime.pipeline import SOURCES

    if source not in SOURCES:
        raise fail(f"--source {source!r}: choose one of {', '.join(SOURCES)}", EXIT_USAGE)
    if qmax is not None and not qmax >= MIN_QMAX:
        raise fail(f"--qmax must be >= {MIN_QMAX:g} 1/A (a PDF's first shell needs it), got {qmax}", EXIT_USAGE)
    if qmax is not None and qmax > MAX_QMAX:
        raise fail(f"--qmax {qmax:g} is beyond any PDF measurement's (at most {MAX_QMAX:g} 1/A): 1/nm?", EXIT_USAGE)
    for name, v in (("qmin", qmin), ("rmin", rmin), ("rmax", rmax)):
        if v is not None and not v >= 0:
            raise fail(f"--{name} must be >= 0, got {v}", EXIT_USAGE)
    if qmin is not None and qmax is not None and qmin >= qmax:
        raise fail(f"--qmin ({qmin}) must be below --qmax ({qmax})", EXIT_USAGE)
    if rmin is not None and rmax is not None and rmin >= rmax:
        raise fail(f"--rmin ({rmin}) must be below --rmax ({rmax})", EXIT_USAGE)
    if qdamp is not None and not 0 <= qdamp <= QDAMP_RANGE[1]:
        raise fail(f"--qdamp must be within 0-{QDAMP_RANGE[1]:g} 1/A, got {qdamp}", EXIT_USAGE)
    return {"qmin": qmin, "qmax": qmax, "rmin": rmin, "rmax": rmax, "qdamp": qdamp}


def _check_library(m, source: str) -> None:
    """A model exported without its cluster library (before the library, or by hand) answers from
    the networks alone: refused for --source library, said for both."""
    if m.manifest.get("library"):
        return
    if source == "library":
        raise fail(f"--source library: the model {m.model_dir} has no cluster library (cbldm-export --library)",
                   EXIT_USAGE)
    if source == "both":
        print(f"warning: the model {m.model_dir} has no cluster library: every answer comes from the networks "
              "alone", file=sys.stderr)


def _make_outdir(outdir: Path) -> Path | None:
    """Create the results folder before the model loads (one line, exit 2, where it cannot be
    made); the topmost folder this made, for ``_unmake`` if the model then fails to load."""
    top = None
    for parent in [outdir, *outdir.parents]:
        if parent.exists():
            break
        top = parent
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"-o {outdir}: cannot be created ({exc.strerror or exc})", EXIT_USAGE) from None
    return top


def _unmake(top: Path | None, lock=None) -> None:
    """Undo ``_make_outdir`` (and the watch lock in it) where nothing else was written there."""
    if lock is not None:    # unlinked while held: no other watcher can take the old file meanwhile
        Path(lock.name).unlink(missing_ok=True)
        lock.close()
    if top is None:
        return
    for d in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()      # only empty folders go
        except OSError:
            return


def _check_outdir(outdir: Path) -> None:
    """Before the model loads, and without creating anything: a results folder that exists as a
    file, or under a parent that is not a writable folder, is a usage error (exit 2)."""
    import os

    if outdir.exists():
        if not outdir.is_dir() or not os.access(outdir, os.W_OK):
            raise fail(f"-o {outdir}: not a writable folder", EXIT_USAGE)
        return
    parent = outdir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise fail(f"-o {outdir}: cannot be created ({parent} is not a writable folder)", EXIT_USAGE)


def _describe(m) -> str:
    return m.describe()


def _check_usage(candidates: int, element: Optional[str]) -> Optional[str]:
    """Options a file cannot fix: exit 2 before the model loads. Returns the element symbol."""
    from cbldm.runtime.formfactors import check_element, check_metal

    if candidates < 1:
        raise fail("--candidates must be >= 1", EXIT_USAGE)
    if element is None:
        return None
    try:
        check_element(element)
    except ValueError:
        raise fail(f"unknown element {element!r} (give a chemical symbol such as Au, Pt)", EXIT_USAGE) from None
    try:
        return check_metal(element)
    except ValueError as exc:
        raise fail(f"--element {element}: {exc}", EXIT_USAGE) from None


@app.command()
def predict(
    files: list[Path] = typer.Argument(..., metavar="FILE", help="PDF files (G(r): .gr .dat .txt .csv .xy .fgr, "
                                                                 "whatever the suffix).",
                                       readable=False),   # an unreadable file is refused alone
    outdir: Path = typer.Option(Path("cbldm-results"), "--outdir", "-o", help="Where results go."),
    model: Optional[Path] = typer.Option(None, help=MODEL_HELP),
    candidates: int = CANDIDATES, element: Optional[str] = ELEMENT, backend: str = BACKEND,
    precision: str = PRECISION, seed: int = SEED, threads: Optional[int] = THREADS, plot: bool = PLOT,
    t1: Optional[int] = typer.Option(None, help="Skip-step t1 (default: the model's)."),
    t2: Optional[int] = typer.Option(None, help="Skip-step t2."),
    steps_before: Optional[int] = typer.Option(None, help="U-Net calls before the jump."),
    steps_after: Optional[int] = typer.Option(None, help="U-Net calls after the jump."),
    refine: int = REFINE, refine_iter: int = REFINE_ITER, disorder: bool = DISORDER, source: str = SOURCE,
    qmin: Optional[float] = QMIN, qmax: Optional[float] = QMAX, rmin: Optional[float] = RMIN,
    rmax: Optional[float] = RMAX, qdamp: Optional[float] = QDAMP,
):
    """Predict a structure for each PDF: <stem>.xyz, .fit.gr, .json, .png in OUTDIR.

    Each answer carries a verdict (ok, doubtful, unusable) with plain-language warnings; it is
    printed on the result line, written in the JSON and in the picture's title."""
    from cbldm.runtime.backends import GraphError
    from cbldm.runtime.fileutil import shown
    from cbldm.runtime.pdfio import PDFInputError
    from cbldm.runtime.results import process_file, write_error

    element = _check_usage(candidates, element)
    physics = _physics(source, qmin, qmax, rmin, rmax, qdamp)
    ref = refine_config(refine, refine_iter, disorder=disorder, threads=threads)
    _check_outdir(outdir)
    _check_backend(backend, precision)
    made = _make_outdir(outdir)
    try:
        m = _open(model, backend, precision, threads)
        _check_library(m, source)
        sampler = _sampler(m, t1, t2, steps_before, steps_after)
    except BaseException:
        _unmake(made)
        raise
    typer.echo(_describe(m), err=True)
    failed = 0
    for path in files:
        try:
            res = process_file(path, m, outdir, sampler, candidates, element, seed, plot, ref, source, physics)
        except PDFInputError as exc:
            print(f"error: {shown(exc)}", file=sys.stderr)
            failed += 1
            continue
        except GraphError as exc:  # the model failed on this input: no answer, say which graph
            print(f"error: {shown(path)}: {exc}", file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:   # one file's failure is said, and the others are still answered
            what = f"{shown(path)}: {type(exc).__name__}: {' '.join(shown(exc).split())}"
            try:   # the traceback goes to a report beside the results, as watch writes it
                report = write_error(outdir, path, f"error: {what}\n{traceback.format_exc()}")
                where = f"; the traceback is in {shown(report)}"
            except OSError:
                where = ""
            print(f"error: {what} (a defect of cbldm: please report it with the file{where})", file=sys.stderr)
            failed += 1
            continue
        typer.echo(shown(f"{path}: {res.line()}, {res.seconds:.2f} s -> "
                         f"{outdir / res.stem}.{{xyz,fit.gr,json" + (",png}" if plot else "}")))
    if failed:
        _unmake(made)     # where no file was answered, the folder made for them goes again
        raise typer.Exit(EXIT_INPUT)


@app.command()
def watch(
    directory: Path = typer.Argument(..., metavar="DIRECTORY",
                                     help="Directory the PDFs arrive in (its subfolders are not watched)."),
    outdir: Optional[Path] = typer.Option(None, "--outdir", "-o",
                                          help="Results (default: a folder cbldm-results in DIRECTORY). DIRECTORY "
                                               "itself is refused (exit 2): its results would be read as new input."),
    model: Optional[Path] = typer.Option(None, help=MODEL_HELP),
    poll: bool = typer.Option(False, help="Poll instead of inotify (network file systems)."),
    interval: float = typer.Option(1.0, help="Polling period (s)."),
    settle: float = typer.Option(2.0, help="A file is complete once its size and mtime have held still this long "
                                           "(s), in both modes; make it longer than any pause of the writer."),
    once: bool = typer.Option(False, "--once", help="Answer the files there (and any arriving meanwhile), then exit: "
                                                    "1 if one got an error report (a batch, a cron job)."),
    candidates: int = CANDIDATES, element: Optional[str] = ELEMENT, backend: str = BACKEND,
    precision: str = PRECISION, seed: int = SEED, threads: Optional[int] = THREADS, plot: bool = PLOT,
    refine: int = REFINE, refine_iter: int = REFINE_ITER, disorder: bool = DISORDER, source: str = SOURCE,
    qmin: Optional[float] = QMIN, qmax: Optional[float] = QMAX, rmin: Optional[float] = RMIN,
    rmax: Optional[float] = RMAX, qdamp: Optional[float] = QDAMP,
):
    """Process every new PDF once it has stopped changing for --settle s; until SIGINT/SIGTERM (--once: none left).

    Files taken: .csv .dat .fgr .gr .txt .xy (not hidden, not ~ .tmp .part .swp). Inotify events
    (or --poll's scans) only wake the check. The journal OUTDIR/.cbldm-journal.jsonl survives
    restarts; a file that stopped the service twice (crash, kill) gets <stem>.error.txt and is not
    tried again until it changes. SIGINT/SIGTERM finish the file in hand; a second one stops at
    once (exit 130), and that file is answered at the next start.
    """
    from cbldm.runtime.fileutil import shown
    from cbldm.runtime.results import process_file
    from cbldm.runtime.watch import WatchConfig, Watcher, WatchUsageError, check_dirs, take_lock

    element = _check_usage(candidates, element)
    physics = _physics(source, qmin, qmax, rmin, rmax, qdamp)
    ref = refine_config(refine, refine_iter, disorder=disorder, threads=threads)
    if not directory.is_dir():
        raise fail(f"{directory}: not a directory")
    out = outdir or directory / "cbldm-results"
    try:
        check_dirs(directory, out)
    except WatchUsageError as exc:
        raise fail(str(exc), EXIT_USAGE)
    if settle <= 0 or interval <= 0:
        raise fail("--settle and --interval must be > 0", EXIT_USAGE)
    _check_outdir(out)
    _check_backend(backend, precision)     # usage errors first: they leave nothing behind
    made = _make_outdir(out)
    try:   # before the model loads (a TensorRT engine can take minutes): a second watcher is refused at once
        lock = take_lock(out)
    except WatchUsageError as exc:
        _unmake(made)
        raise fail(str(exc), EXIT_USAGE)
    try:
        m = _open(model, backend, precision, threads)
        _check_library(m, source)
    except BaseException:    # a model that does not load leaves no results folder, nor its lock
        _unmake(made, lock)
        raise
    sampler = _sampler(m, None, None, None, None)

    def log(msg: str) -> None:
        print(shown(f"{time.strftime('%H:%M:%S')} {msg}"), flush=True)

    def handle(path: Path):
        res = process_file(path, m, out, sampler, candidates, element, seed, plot, ref, source, physics)
        log(f"{path.name}: {res.line()}, {res.seconds:.2f} s -> {res.stem}.*")
        return "ok", {"outputs": res.outputs, "n_atoms": res.n_atoms, "rwp": res.rwp, "verdict": res.verdict,
                      "motif": res.motif, "seconds": res.seconds, "answered_sha256": res.source_sha256}

    log(_describe(m))
    try:
        watcher = Watcher(directory, out, handle, WatchConfig(poll=poll, interval=interval, settle=settle, once=once),
                          log, lock)
    except WatchUsageError as exc:
        raise fail(str(exc), EXIT_USAGE)
    code = watcher.run()
    if code:
        raise typer.Exit(code)


@app.command()
def info(model: Optional[Path] = typer.Option(None, help=MODEL_HELP),
         backend: str = typer.Option("auto", help=BACKEND_HELP),
         precision: str = typer.Option("fp32", help=PRECISION_HELP),
         as_json: bool = typer.Option(False, "--json", help="One JSON object instead of lines (for scripts).")):
    """What a model is, how it was made, and which backend would run it."""
    from cbldm.runtime.modelinfo import info_lines, model_info

    m = _open(model, backend, precision, None)
    doc = model_info(m)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    for label, value in info_lines(doc):
        typer.echo(f"{label:<11} {value}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
