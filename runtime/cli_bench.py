"""cbldm-bench: latency of the beamline path, per stage, with alternatives compared in one run.

Rows: end to end (file read to results written) with the shipped skip-step sampler and
with the full 1000-step DDPM sampler; ONNX Runtime fp32 vs fp16; PyTorch eager (``--run``,
needs torch) and TensorRT (when the model has engines and tensorrt imports); batch 1 and
batched. Prints a table and writes JSON. Times are wall-clock on this machine: compare the
ratios, the absolute numbers depend on the machine named in the JSON.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cbldm.runtime.cliutil import fail, run_app

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def machine_info() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
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


def _e2e(model, files: list[Path], sampler, candidates: int, repeats: int, refine=None) -> dict:
    from cbldm.runtime.pipeline import RefineConfig
    from cbldm.runtime.results import process_file

    refine = RefineConfig() if refine is None else refine
    totals, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for f in files:
                t0 = time.perf_counter()
                process_file(f, model, Path(tmp), sampler, candidates, None, seed=rep, plot=False,
                             refine=refine)
                totals.append(time.perf_counter() - t0)
                doc = json.loads(sorted(Path(tmp).glob("*.json"), key=os.path.getmtime)[-1].read_text())
                for k, v in doc["timings"].items():
                    stages.setdefault(k, []).append(v)
    return {"p50_s": _pct(totals, 50), "p95_s": _pct(totals, 95), "n": len(totals),
            "stages_p50_s": {k: _pct(v, 50) for k, v in stages.items()}}


def _networks_only(nets, g: np.ndarray, sampler, candidates: int, batch: int, repeats: int) -> dict:
    """Encode + sample + decode (no recovery): what the graphs cost, per PDF."""
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
        if rep:  # the first is a warm-up
            times.append((time.perf_counter() - t0) / batch)
    return {"p50_s": _pct(times, 50), "p95_s": _pct(times, 95), "n": len(times)}


@app.command()
def bench(
    model: Optional[Path] = typer.Option(None, help="Exported model directory (default: the shipped one)."),
    files: Optional[list[Path]] = typer.Option(None, "--file", help="PDF file(s) to time (default: the example)."),
    run: Optional[Path] = typer.Option(None, help="Training run: adds PyTorch eager rows (needs torch)."),
    candidates: int = typer.Option(4, "-k", help="Candidates per PDF."),
    repeats: int = typer.Option(10, help="Repeats per row."),
    full_repeats: int = typer.Option(2, help="Repeats of the 1000-call full sampler."),
    batch: int = typer.Option(8, help="PDFs per call for the batched rows."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads."),
    out: Path = typer.Option(Path("benchmarks/results/runtime.json"), help="JSON output."),
):
    """Latency table: skip-step vs full sampler, backends, precisions, batch sizes."""
    from cbldm.runtime.backends import ModelError, load_model
    from cbldm.runtime.pipeline import NO_REFINEMENT, RefineConfig
    from cbldm.runtime.pdf import rgrid
    from cbldm.runtime.pdfio import read_pdf, resample
    from cbldm.runtime.sampling import SamplerConfig

    if model is None:
        from cbldm.models import default_model_dir

        model = default_model_dir()
    if not files:
        files = [Path(__file__).resolve().parents[1] / "examples" / "Pt_decahedron_p3_q2_r1.gr"]
        if not files[0].exists():
            raise fail("no --file given and the example PDF is not installed")
    try:
        m32 = load_model(model, backend="cpu", precision="fp32", threads=threads)
    except ModelError as exc:
        raise fail(str(exc))
    shipped = SamplerConfig(**m32.manifest["sampler"])
    full = SamplerConfig(t1=999, t2=999, steps_before=0, steps_after=1000, kind="ddpm", clip=shipped.clip)
    g, _ = resample(read_pdf(files[0]), rgrid())
    rows = []

    def add(name, backend, precision, sampler_name, calls, b, res, refine="-"):
        rows.append({"row": name, "backend": backend, "precision": precision, "sampler": sampler_name,
                     "unet_calls": calls, "batch": b, "refine": refine, **{k: v for k, v in res.items() if k != "stages_p50_s"},
                     **({"stages_p50_s": res["stages_p50_s"]} if "stages_p50_s" in res else {})})

    calls = shipped.unet_calls()
    # the shipped defaults first: every ratio in the table is against this row
    top = RefineConfig().top
    add("end to end", "ort-cpu", "fp32", "skip-step", calls, 1, _e2e(m32, files, shipped, candidates, repeats),
        top)
    add("end to end", "ort-cpu", "fp32", "skip-step", calls, 1,
        _e2e(m32, files, shipped, candidates, repeats, NO_REFINEMENT), 0)
    add("end to end", "ort-cpu", "fp32", "full DDPM", 1000, 1, _e2e(m32, files, full, candidates, full_repeats),
        top)
    add("networks", "ort-cpu", "fp32", "skip-step", calls, 1, _networks_only(m32, g, shipped, candidates, 1, repeats))
    add("networks", "ort-cpu", "fp32", "skip-step", calls, batch,
        _networks_only(m32, g, shipped, candidates, batch, max(2, repeats // 2)))
    if any("fp16" in v for v in m32.manifest["graphs"].values()):
        m16 = load_model(model, backend="cpu", precision="fp16", threads=threads)
        add("end to end", "ort-cpu", "fp16", "skip-step", calls, 1, _e2e(m16, files, shipped, candidates, repeats),
            top)
        add("networks", "ort-cpu", "fp16", "skip-step", calls, 1,
            _networks_only(m16, g, shipped, candidates, 1, repeats))
    for backend in ("cuda", "tensorrt"):
        try:
            mb = load_model(model, backend=backend)
        except ModelError:
            continue
        add("networks", backend, "fp32", "skip-step", calls, 1, _networks_only(mb, g, shipped, candidates, 1, repeats))
        add("end to end", backend, "fp32", "skip-step", calls, 1, _e2e(mb, files, shipped, candidates, repeats),
            top)
    if run is not None:
        from cbldm.training.evaluate import TorchNetworks  # torch: only for this comparison

        tn = TorchNetworks(run)
        add("networks", "torch-eager-cpu", "fp32", "skip-step", calls, 1,
            _networks_only(tn, g, shipped, candidates, 1, repeats))
        add("networks", "torch-eager-cpu", "fp32", "skip-step", calls, batch,
            _networks_only(tn, g, shipped, candidates, batch, max(2, repeats // 2)))

    base = rows[0]["p50_s"]
    for r in rows:
        r["x_vs_shipped_e2e"] = r["p50_s"] / base
    cols = ["row", "backend", "precision", "sampler", "unet_calls", "refine", "batch", "p50_s", "p95_s",
            "x_vs_shipped_e2e"]
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    typer.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        typer.echo("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))
    st = rows[0]["stages_p50_s"]
    typer.echo("shipped end to end, p50 per stage: " + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in st.items()))
    full_e2e = next(r for r in rows if r["sampler"] == "full DDPM")
    typer.echo(f"full 1000-call sampler / skip-step: {full_e2e['p50_s'] / base:.1f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "runtime", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "machine": machine_info(), "model": str(model), "model_hash": m32.hash,
                               "candidates": candidates, "shipped_sampler": shipped.as_dict(), "rows": rows},
                              indent=1))
    typer.echo(f"wrote {out}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
