"""cbldm-bench: latency of the beamline path, per stage, with alternatives compared in one run.

Rows: end to end (file read to results written) with the shipped skip-step sampler,
refinement on and off, and the full 1000-step DDPM sampler; ONNX Runtime fp32 vs fp16;
the networks alone at batch 1, 8 and 64 (per PDF); CUDA and TensorRT when the model and
this machine have them; PyTorch eager only with ``--run`` (needs torch and a training
run). Prints a table with every row's ratio to the shipped path and a table of per-stage
times, and writes JSON. Times are wall-clock on this machine: compare the ratios, the
absolute numbers depend on the machine named in the JSON.
"""
from __future__ import annotations

# cliutil before numpy: it sets OPENBLAS_NUM_THREADS=1, which only takes effect if numpy
# has not loaded yet. Imported after numpy it cost 15.6 s instead of 2.7 s end to end
# (refinement 14.0 s): numpy's and scipy's OpenBLAS pools spun against each other.
from cbldm.runtime.cliutil import EXIT_USAGE, fail, refine_workers, run_app  # isort: skip

import json
import os
import platform
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import typer

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])

EXAMPLE = "Pt_decahedron_p3_q2_r1.gr"
DEFAULT_OUT = "cbldm-bench.json"


def example_pdf() -> Path:
    """The example PDF (a 146-atom Pt decahedron) as installed with the package: the
    repository's ``examples/`` folder is not in the wheel, ``cbldm/runtime/data/`` is."""
    return Path(str(resources.files("cbldm.runtime").joinpath("data").joinpath(EXAMPLE)))


def default_out(folder: Path) -> Path:
    """``cbldm-bench.json`` in ``folder``, or ``-2``, ``-3``...: a default never replaces a
    file, least of all a tracked result; an explicit ``--out`` is what the user asked for."""
    p, k = folder / DEFAULT_OUT, 1
    while p.exists():
        k += 1
        p = folder / f"cbldm-bench-{k}.json"
    return p


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def machine_info() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def _e2e(model, files: list[Path], sampler, candidates: int, repeats: int, refine, warmup: bool = False,
         source: str = "both") -> dict:
    from cbldm.runtime.results import process_file

    totals, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if warmup:  # a model's first prediction pays for graph initialisation and kernel caches
            process_file(files[0], model, Path(tmp), sampler, candidates, None, seed=0, plot=False, refine=refine,
                         source=source)
        for rep in range(repeats):
            for f in files:
                t0 = time.perf_counter()
                res = process_file(f, model, Path(tmp), sampler, candidates, None, seed=rep, plot=False,
                                   refine=refine, source=source)
                totals.append(time.perf_counter() - t0)
                doc = json.loads((Path(tmp) / f"{res.stem}.json").read_text())
                for k, v in doc["timings"].items():
                    stages.setdefault(k, []).append(v)
    return {"p50_s": _pct(totals, 50), "p95_s": _pct(totals, 95), "n": len(totals),
            "stages_p50_s": {k: _pct(v, 50) for k, v in stages.items()}}


def _networks_only(nets, g: np.ndarray, sampler, candidates: int, batch: int, repeats: int) -> dict:
    """Encode + sample + decode (no recovery) for ``batch`` PDFs in one call: seconds per PDF."""
    from cbldm.runtime.preprocess import LATENT_SHAPE, model_input
    from cbldm.runtime.sampling import Schedule, skip_step_sample

    sched = Schedule()
    pdf = np.repeat(model_input(np.repeat(g[None], batch, 0))[0], candidates, axis=0)
    times = []
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        cond = nets.condition(pdf)
        mu, lv = nets.prior(pdf)
        z = skip_step_sample(sched, nets.unet, cond, mu.astype(np.float64), lv.astype(np.float64), sampler,
                             np.random.default_rng(rep))
        nets.decoder(z.astype(np.float32).reshape(len(pdf), *LATENT_SHAPE))
        if rep:  # the first is a warm-up (and a new batch size's memory plan)
            times.append((time.perf_counter() - t0) / batch)
    return {"p50_s": _pct(times, 50), "p95_s": _pct(times, 95), "n": len(times)}


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise fail(f"--batch-sizes must be a comma-separated list of integers >= 1, got {text!r}", EXIT_USAGE)
    return sizes


def _torch_networks():
    """PyTorch eager networks for ``--run``: the one place the runtime reaches into training,
    and only when asked; everything else here runs on numpy, scipy and onnxruntime."""
    try:
        import torch  # noqa: F401

        from cbldm.training.runs import TorchNetworks
    except ImportError as exc:
        raise fail(f"--run needs PyTorch and cbldm's training code (pip install 'cbldm[train]'): {exc}",
                   EXIT_USAGE) from None
    return TorchNetworks


@app.command()
def bench(
    model: Optional[Path] = typer.Option(None, help="Exported model directory (default: the shipped one)."),
    files: Optional[list[Path]] = typer.Option(None, "--file", help="PDF file(s) to time (default: the example "
                                                                    "PDF shipped with the package)."),
    run: Optional[Path] = typer.Option(None, help="Training run: adds PyTorch eager rows (needs torch)."),
    candidates: int = typer.Option(4, "-k", help="Candidates per PDF."),
    repeats: int = typer.Option(10, help="Repeats per end-to-end row."),
    full_repeats: int = typer.Option(2, help="Repeats of the 1000-call full sampler."),
    batch_sizes: str = typer.Option("1,8,64", help="PDFs per call for the networks-only rows."),
    threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime intra-op threads, and candidates refined "
                                                            "side by side (as cbldm-run's --threads)."),
    out: Optional[Path] = typer.Option(None, help=f"JSON output (replaced if it exists; default: {DEFAULT_OUT} "
                                                  "in the current directory, or the next free -2, -3...)."),
):
    """Latency table: skip-step vs full sampler, refinement, precisions, batch sizes, per stage."""
    from cbldm.runtime.backends import ModelError, load_model
    from cbldm.runtime.fileutil import atomic_write_text
    from cbldm.runtime.pdf import rgrid
    from cbldm.runtime.pdfio import PDFInputError, read_pdf, resample
    from dataclasses import replace

    from cbldm.runtime.pipeline import NO_REFINEMENT, RefineConfig
    from cbldm.runtime.sampling import SamplerConfig

    sizes = _batch_sizes(batch_sizes)
    if candidates < 1 or repeats < 1 or full_repeats < 1:
        raise fail("-k, --repeats and --full-repeats must be >= 1", EXIT_USAGE)
    torch_networks = _torch_networks() if run is not None else None  # fail now, not after minutes
    if model is None:
        from cbldm.models import default_model_dir

        model = default_model_dir()
    if not files:
        files = [example_pdf()]
        if not files[0].is_file():
            raise fail(f"{files[0]}: the example PDF is missing from this installation; give --file")
    out = out if out is not None else default_out(Path.cwd())
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        # before minutes of timing, not after them
        raise fail(f"--out {out}: not a file in a writable folder", EXIT_USAGE)
    try:
        m32 = load_model(model, backend="cpu", precision="fp32", threads=threads)
    except ModelError as exc:
        raise fail(str(exc))
    try:
        g, _ = resample(read_pdf(files[0]), rgrid())
        for f in files[1:]:
            read_pdf(f)
    except PDFInputError as exc:
        raise fail(str(exc))
    shipped = SamplerConfig(**m32.manifest["sampler"])
    full = SamplerConfig(t1=999, t2=999, steps_before=0, steps_after=1000, kind="ddpm", clip=shipped.clip)
    refine_on, refine_off = RefineConfig(workers=refine_workers(threads)), NO_REFINEMENT   # what cbldm-run runs
    refine_one = replace(refine_on, workers=1)
    calls = shipped.unet_calls()
    rows = []

    def add(name, backend, precision, sampler_name, n_calls, b, res, refine="-", source="both", workers=None):
        if workers is None:
            workers = refine_on.workers if refine not in ("-", 0) else "-"
        rows.append({"row": name, "backend": backend, "precision": precision, "sampler": sampler_name,
                     "source": source, "unet_calls": n_calls, "batch": b, "refine": refine,
                     "refine_threads": workers, **res})

    warm: set[int] = set()

    def e2e(m, sampler, reps, refine, source="both"):
        first = id(m) not in warm
        warm.add(id(m))
        return _e2e(m, files, sampler, candidates, reps, refine, warmup=first, source=source)

    def nets(m, b):  # fewer calls for big batches: each already averages over b PDFs
        return _networks_only(m, g, shipped, candidates, b, max(2, -(-repeats // b)))

    # the shipped defaults first: every ratio in the table is against this row
    add("end to end", "ort-cpu", "fp32", "skip-step", calls, 1, e2e(m32, shipped, repeats, refine_on),
        refine_on.top)
    if refine_on.workers > 1:   # candidates refined one after the other, as before 2026-11-29
        add("end to end", "ort-cpu", "fp32", "skip-step", calls, 1, e2e(m32, shipped, repeats, refine_one),
            refine_one.top, workers=1)
    add("end to end", "ort-cpu", "fp32", "skip-step", calls, 1, e2e(m32, shipped, repeats, refine_off), 0)
    add("end to end", "ort-cpu", "fp32", "-", 0, 1, e2e(m32, shipped, repeats, refine_on, "library"),
        refine_on.top, "library")
    add("end to end", "ort-cpu", "fp32", "full DDPM", full.unet_calls(), 1,
        e2e(m32, full, full_repeats, refine_on), refine_on.top)
    m16 = None
    if any("fp16" in v for v in m32.manifest["graphs"].values()):
        m16 = load_model(model, backend="cpu", precision="fp16", threads=threads)
        add("end to end", "ort-cpu", "fp16", "skip-step", calls, 1, e2e(m16, shipped, repeats, refine_on),
            refine_on.top)
    for b in sizes:
        add("networks", "ort-cpu", "fp32", "skip-step", calls, b, nets(m32, b))
    if m16 is not None:
        add("networks", "ort-cpu", "fp16", "skip-step", calls, sizes[0], nets(m16, sizes[0]))
    for backend in ("cuda", "tensorrt"):
        try:
            mb = load_model(model, backend=backend)
        except ModelError:
            continue
        add("end to end", backend, "fp32", "skip-step", calls, 1, e2e(mb, shipped, repeats, refine_on),
            refine_on.top)
        for b in sizes:
            add("networks", backend, "fp32", "skip-step", calls, b, nets(mb, b))
    if torch_networks is not None:
        tn = torch_networks(run)
        for b in sizes[:2]:
            add("networks", "torch-eager-cpu", "fp32", "skip-step", calls, b, nets(tn, b))

    base = rows[0]["p50_s"]
    for r in rows:
        r["x_vs_shipped_e2e"] = r["p50_s"] / base
    _table(rows, ["row", "backend", "precision", "source", "sampler", "unet_calls", "refine", "refine_threads",
                  "batch", "p50_s", "p95_s", "x_vs_shipped_e2e"])
    typer.echo("(end to end rows: seconds per file; networks rows: seconds per PDF, a call of 'batch' PDFs "
               "divided by the batch)")
    typer.echo("")
    staged = [r for r in rows if "stages_p50_s" in r]
    stage_names = list(dict.fromkeys(k for r in staged for k in r["stages_p50_s"]))
    _table([{"row": f"{r['backend']} {r['precision']} {r['source']} {r['sampler']} refine {r['refine']}"
                    + (f" x{r['refine_threads']}" if r["refine_threads"] != "-" else ""),
             **{k.removesuffix("_s"): f"{1e3 * r['stages_p50_s'][k]:.0f}" if k in r["stages_p50_s"] else "-"
                for k in stage_names}} for r in staged],
           ["row", *(k.removesuffix("_s") for k in stage_names)], title="end to end, p50 per stage (ms)")
    full_e2e = next(r for r in rows if r["sampler"] == "full DDPM")
    typer.echo(f"full 1000-call sampler / skip-step: {full_e2e['p50_s'] / base:.1f}x end to end")
    atomic_write_text(out, json.dumps({"benchmark": "runtime", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "machine": machine_info(), "model": str(model), "model_hash": m32.hash,
                                       "files": [str(f) for f in files], "candidates": candidates,
                                       "shipped_sampler": shipped.as_dict(), "rows": rows}, indent=1))
    typer.echo(f"wrote {out}")


def _table(rows: list[dict], cols: list[str], title: str | None = None) -> None:
    if title:
        typer.echo(title)
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    typer.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        typer.echo("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
