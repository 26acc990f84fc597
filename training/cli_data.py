"""cbldm-data: build the simulated training set, compute a PDF, inspect a dataset."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import EXIT_USAGE, fail, require_extra, run_app
from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF, PDFParams

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulated nanoparticle PDFs: the CbLDM training set and single PDFs.")


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory (created; re-running resumes)."),
    limit: Optional[int] = typer.Option(None, help="Only N structures, spread over types and sizes."),
    workers: int = typer.Option(max(1, os.cpu_count() or 1), help="Worker processes."),
    seed: int = typer.Option(0, help="Seed of the stratified train/val/test split."),
):
    """Enumerate the unique clusters (7 types, 5-256 atoms), simulate their PDFs, write shards."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from cbldm.training.dataset import DatasetError, generate as run_generate

    if limit is not None and limit < 1:
        raise fail("--limit must be >= 1", EXIT_USAGE)
    if workers < 1:
        raise fail("--workers must be >= 1", EXIT_USAGE)
    require_extra("cbldm-data generate", "data")
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task("enumerating clusters", total=None)

        def progress(done, total):
            bar.update(task, description="simulating PDFs", completed=done, total=total)

        try:
            result = run_generate(out, limit=limit, workers=workers, seed=seed, progress=progress)
        except DatasetError as exc:
            raise fail(str(exc))
    m = result.manifest
    typer.echo(f"{out}: {m['n_structures']} structures in {len(m['shards'])} shards "
               f"({result.written_shards} written, {result.skipped_shards} already done), "
               f"{m['wall_time_s']} s with {workers} worker(s)")
    _print_counts(m)


def _print_counts(m: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="structures per type")
    for col in ("type", "total", "train", "val", "test"):
        table.add_column(col, justify="right" if col != "type" else "left")
    per_split = m["split_counts_per_type"]
    for t, n in m["counts_per_type"].items():
        table.add_row(t, str(n), *[str(per_split[s][t]) for s in ("train", "val", "test")])
    table.add_row("total", str(m["n_structures"]), *[str(m["split_counts"][s]) for s in ("train", "val", "test")])
    Console().print(table)


@app.command()
def pdf(
    structure: Path = typer.Argument(..., help="Any structure file ASE reads (xyz, extxyz, cif, pdb, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .gr file."),
    qmin: float = typer.Option(DEEPSTRUC_PARAMS.qmin, help="Qmin (1/A)."),
    qmax: float = typer.Option(DEEPSTRUC_PARAMS.qmax, help="Qmax (1/A)."),
    qdamp: float = typer.Option(DEEPSTRUC_PARAMS.qdamp, help="Qdamp (1/A)."),
    biso: float = typer.Option(DEEPSTRUC_PARAMS.biso, help="Isotropic Debye-Waller Biso (A^2)."),
    delta2: float = typer.Option(DEEPSTRUC_PARAMS.delta2, help="Correlated-motion delta2 (A^2)."),
    rmax: float = typer.Option(DEEPSTRUC_PARAMS.rmax, help="rmax (A, excluded)."),
    rstep: float = typer.Option(DEEPSTRUC_PARAMS.rstep, help="r step (A)."),
):
    """Compute the X-ray PDF of one structure (element taken from the file) and write a .gr."""
    from cbldm.runtime.pdfio import write_gr

    if not structure.is_file():
        raise fail(f"{structure}: {'is a directory' if structure.is_dir() else 'no such file'}")
    if output.is_dir() or not output.parent.is_dir():
        raise fail(f"-o {output}: not a file in an existing folder", EXIT_USAGE)
    try:
        params = PDFParams(qmin=qmin, qmax=qmax, qdamp=qdamp, biso=biso, delta2=delta2,
                           rmax=rmax, rstep=rstep)
        if (params.rmax - params.rmin) / params.rstep < 10:
            raise ValueError(f"--rstep {rstep:g} leaves fewer than 10 points between rmin and rmax")
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE)
    try:
        import ase.io

        atoms = ase.io.read(structure)
    except Exception as exc:
        raise fail(f"{structure}: not a structure file ASE can read ({type(exc).__name__}: {exc})")
    if len(atoms) == 0:
        raise fail(f"{structure}: contains no atoms")
    try:
        calc = DebyePDF(params)
        g = calc.calc(atoms.get_positions(), atoms.get_chemical_symbols())
    except ValueError as exc:
        raise fail(f"{structure}: {exc}")
    header = {"source": str(structure), "composition": atoms.get_chemical_formula(),
              "calculator": "cbldm DebyePDF (DiffPy DebyePDFCalculator semantics)",
              **{k: v for k, v in params.as_dict().items()}}
    write_gr(output, calc.r, g, header, title="cbldm-data pdf")
    typer.echo(f"{output}: G(r) of {len(atoms)} atoms ({atoms.get_chemical_formula()}), "
               f"r {calc.r[0]:g}-{calc.r[-1]:g} A, {len(calc.r)} points")


@app.command()
def resample(
    files: list[Path] = typer.Argument(..., metavar="FILE", help="Measured or simulated PDF files (.gr .dat .txt .csv)."),
    outdir: Path = typer.Option(..., "--outdir", "-o", help="Where <stem>.model.gr files go."),
):
    """Read PDFs and write them on the model's r grid (0-30 A, 0.01 A), saying what was done."""
    from cbldm.runtime.pdfio import PDFInputError, read_pdf, resample as do_resample, write_gr

    r_model = DebyePDF(DEEPSTRUC_PARAMS).r
    failed = 0
    for path in files:
        try:
            data = read_pdf(path)
        except PDFInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        g, record = do_resample(data, r_model)
        header = {"source": str(path), "source_format": data.format,
                  "composition": data.meta.get("composition", ""),
                  **{k: v for k, v in record.items() if k != "notes" and v is not None},
                  "notes": "; ".join(record["notes"]) or "none"}
        out = write_gr(outdir / f"{path.stem}.model.gr", r_model, g, header, title="cbldm-data resample")
        zeroed = record["points_zeroed"]
        typer.echo(f"{out}: {record['source_points']} points, r {record['source_rmin']:g}-"
                   f"{record['source_rmax']:g} A -> 3000 points" + (f", {zeroed} zeroed (no data)" if zeroed else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def library(
    out: Path = typer.Option(..., "--out", "-o", help="Library file to write (.npz), e.g. MODELDIR/library.npz."),
    max_atoms: int = typer.Option(3000, help="Largest cluster of the extended part."),
):
    """Build the cluster library the runtime searches: the recipe's 331 shapes, the common shapes it
    does not build up to 256 atoms (truncated octahedra, cuboctahedra, fcc/hcp/bcc spheres),
    ideal clusters of 257..MAX_ATOMS atoms (octahedra, truncated octahedra, icosahedra,
    decahedra, spheres) and twinned fcc spheres (a twin plane, a stacking fault, lamellar
    twins; up to 1500 atoms)."""
    from cbldm.training.library_build import build

    if max_atoms < 257:
        raise fail("--max-atoms must be >= 257 (the recipe covers up to 256)", EXIT_USAGE)
    info = build(out, max_atoms=max_atoms, log=typer.echo)
    typer.echo(f"{out}: {info['recipe']} recipe shapes + {info['common']} common + {info['extended']} extended + "
               f"{info['twinned']} twinned, "
               f"{info['q_points']} Q points")


@app.command()
def families(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the .gr/.xyz files and index.json."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random choice (default: set a 23, set b 31, "
                                                  "large 41; the tuning twins: 24, 32, 43)."),
    which: str = typer.Option("a", "--set", help="a: supported, lamellar-twinned, rod and hcp-prism particles "
                                                 "(cbldm.training.heldout; its lamellar twins are a library family "
                                                 "since 2026-11-27); b: platelets, 4H/6H polytypes, twinned "
                                                 "bipyramids, multiply twinned spheres (cbldm.training.heldout_b); "
                                                 "large: particles of 2,500-15,000 atoms, beyond the library "
                                                 "(cbldm.training.heldout_large)."),
):
    """Write a held-out families set: particle families that neither the cluster library nor the
    training pool holds, in the out-of-recipe set's format. Never train or tune on it."""
    from cbldm.training import heldout, heldout_b, heldout_large
    from cbldm.training.offrecipe import write

    sets = {"a": heldout, "b": heldout_b, "large": heldout_large}
    if which not in sets:
        raise fail(f"--set must be a, b or large, got {which!r}", EXIT_USAGE)
    mod = sets[which]
    seed = mod.SEED if seed is None else seed
    write(mod.build(seed), out, seed, log=typer.echo)


@app.command()
def offrecipe(
    data: Path = typer.Option(..., help="The dataset (its test-split shapes are perturbed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the .gr/.xyz files and index.json."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    tuning: bool = typer.Option(False, help="Write the tuning set instead: the same non-ideal versions and "
                                            "physics of the validation shapes (seed 1 unless given)."),
    bare: bool = typer.Option(False, help="Write each PDF as users export one: no Q range in the header "
                                          "(the composition only), its noise cut with F(Q) at Qmax as a "
                                          "reduction program's is."),
):
    """Write the out-of-recipe test set: unseen families, non-ideal test shapes, other physics,
    particles of 300-2500 atoms (cbldm.training.offrecipe). Never train or tune on it; tune
    on --tuning."""
    from cbldm.training.dataset import DatasetError
    from cbldm.training.offrecipe import build as build_items, tuning_set, write

    try:
        items = tuning_set(data, seed or 1) if tuning else build_items(data, seed)
    except DatasetError as exc:
        raise fail(str(exc))
    write(items, out, seed, log=typer.echo, bare=bare)


@app.command()
def info(root: Path = typer.Argument(..., metavar="DIR", help="Dataset directory.")):
    """Counts per type, splits and physics parameters of a dataset."""
    from cbldm.training.dataset import DatasetError, load_manifest

    try:
        m = load_manifest(root)
    except DatasetError as exc:
        raise fail(str(exc))
    typer.echo(f"{root}: {m['n_structures']} structures, {len(m['shards'])} shards, seed {m['seed']}, "
               f"generated in {m['wall_time_s']} s")
    typer.echo("PDF parameters: " + json.dumps(m["pdf_params"]))
    _print_counts(m)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
