"""cbldm-export: a training run -> ONNX graphs (fp32, optionally fp16), TensorRT engines, manifest."""
from __future__ import annotations

from pathlib import Path

import typer

from cbldm.runtime.cliutil import EXIT_USAGE, fail, require_extra, run_app

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Training run directory (cbldm-train --out)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write fp16 graphs (fp32 islands, fp32 I/O)."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Build TensorRT engines (needs TensorRT + GPU)."),
    batch_sizes: str = typer.Option("1,8,32", help="TensorRT profile batch sizes (min,opt,max)."),
    exporter: str = typer.Option("dynamo", help="dynamo (torch.export) or torchscript."),
    e2e: int = typer.Option(0, min=0, help="Also compare fp16 vs fp32 end to end on N held-out PDFs (Rwp)."),
    library: Path = typer.Option(None, help="Cluster library to ship with the model (cbldm-data library; "
                                            "default: the shipped model's)."),
):
    """Export the four graphs, check each against PyTorch, write MODELDIR/manifest.json."""
    try:
        sizes = tuple(sorted({int(x) for x in batch_sizes.split(",") if x.strip()}))
    except ValueError:
        raise fail(f"--batch-sizes must be integers like 1,8,32, got {batch_sizes!r}", EXIT_USAGE)
    if not sizes or min(sizes) < 1:
        raise fail("--batch-sizes must be positive", EXIT_USAGE)
    if exporter not in ("dynamo", "torchscript"):
        raise fail(f"--exporter {exporter!r}: choose dynamo or torchscript", EXIT_USAGE)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: is a file, not a model directory", EXIT_USAGE)
    require_extra("cbldm-export", "export")
    from cbldm.export.onnx_export import ExportError, attach_library, export_run, install_export
    from cbldm.runtime.library import Library, LibraryError

    # what can be checked before minutes of export is checked first
    if tensorrt:
        from cbldm.export.tensorrt_build import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise fail(f"--tensorrt: {why}; export without it, or where TensorRT and a GPU are")
    if library is None:
        from cbldm.models import default_model_dir

        library = default_model_dir() / "library.npz"
    if not library.is_file():
        raise fail(f"{library}: no such library (build one with cbldm-data library)")
    try:
        Library(library)
    except LibraryError as exc:
        raise fail(str(exc))
    # written into a folder beside OUT and moved in when everything passed: a failure or an
    # interrupt at any point leaves OUT as it was (a model there stays whole)
    import shutil
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise fail(f"--out {out}: cannot be written ({exc.strerror or exc})", EXIT_USAGE) from None
    if (out / "tensorrt.timing_cache").is_file():    # rebuilt engines reuse what was timed before
        shutil.copyfile(out / "tensorrt.timing_cache", staging / "tensorrt.timing_cache")
    try:
        res = export_run(run, staging, fp16=fp16, exporter=exporter, tensorrt=tensorrt, batch_sizes=sizes,
                         log=typer.echo)
        attach_library(staging, library)
        install_export(staging, out)
    except Exception as exc:   # one line: a torch error can run to kilobytes (an interrupt inside torch.export)
        text = str(exc) if isinstance(exc, (ExportError, LibraryError)) else f"{run}: {type(exc).__name__}: {exc}"
        raise fail(text.strip().splitlines()[0][:400])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    typer.echo(f"{out}: manifest.json written ({len(res['manifest']['graphs'])} graphs"
               + (", fp16" if fp16 else "") + (", TensorRT engines" if tensorrt else "") + ", cluster library)")
    if e2e and fp16:
        from cbldm.export.compare import fp16_vs_fp32

        doc = fp16_vs_fp32(out, run, e2e)
        typer.echo(f"end to end on {doc['n']} held-out PDFs: mean Rwp fp32 {doc['rwp_fp32']:.4f}, "
                   f"fp16 {doc['rwp_fp16']:.4f}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
