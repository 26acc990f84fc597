"""cbldm-eval: held-out accuracy (Table 2 layout), the skip-step sweep, the measured PDFs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import fail, refine_config, require_extra, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evaluate a training run or an exported model on held-out simulated PDFs.")


def _sampler(model: Path, t1, t2, steps_before, steps_after):
    from cbldm.runtime.sampling import SamplerConfig

    if (model / "manifest.json").exists():
        base = dict(json.loads((model / "manifest.json").read_text())["sampler"])
    elif (model / "config.json").exists():  # a run: its sweep choice and latent clip
        from cbldm.export.onnx_export import default_sampler

        base = default_sampler(model).as_dict()
    else:
        base = {}
    for k, v in (("t1", t1), ("t2", t2), ("steps_before", steps_before), ("steps_after", steps_after)):
        if v is not None:
            base[k] = v
    return SamplerConfig(**base)


REFINE_HELP = "Refine the best N candidates' coordinates against the PDF (0: off)."
SPLIT_HELP = "Dataset split: train, val or test."
T1_HELP = "Skip-step t1 (default: the model's)."
T2_HELP = "Skip-step t2 (default: the model's)."
BEFORE_HELP = "U-Net calls before the jump (default: the model's)."
AFTER_HELP = "U-Net calls after the jump (default: the model's)."
SEED_HELP = "Sampling seed."
ITER_HELP = "L-BFGS iterations of the refinement."


def _needs(command: str, model: Path | None, data: bool) -> None:
    """A training run is read with torch (the 'train' extra); a dataset with h5py ('data');
    an exported model needs neither. Checked before anything is read or written."""
    if model is not None and not (model / "manifest.json").exists():
        require_extra(f"cbldm-eval {command}", "train")
    elif data:
        require_extra(f"cbldm-eval {command}", "data")


@app.command()
def accuracy(
    model: Path = typer.Option(..., help="Training run directory or exported model directory."),
    data: Path = typer.Option(..., help="Dataset directory."),
    split: str = typer.Option("test", help=SPLIT_HELP),
    per_type: Optional[int] = typer.Option(100, help="At most N structures per type."),
    candidates: int = typer.Option(4, help="Candidates per PDF, best by Rwp."),
    out: Path = typer.Option(Path("eval"), help="Output directory (JSON, PNG)."),
    t1: Optional[int] = typer.Option(None, help=T1_HELP), t2: Optional[int] = typer.Option(None, help=T2_HELP),
    steps_before: Optional[int] = typer.Option(None, help=BEFORE_HELP),
    steps_after: Optional[int] = typer.Option(None, help=AFTER_HELP),
    seed: int = typer.Option(0, help=SEED_HELP),
    refine: int = typer.Option(4, "--refine", help=REFINE_HELP),
    refine_iter: int = typer.Option(100, help=ITER_HELP),
):
    """Rwp per type on held-out structures, atom-count accuracy, pair-distance error."""
    _needs("accuracy", model, data=True)
    from cbldm.training.dataset import DatasetError
    from cbldm.training.evaluate import dump, evaluate, open_networks, plot_examples, table_markdown

    ref = refine_config(refine, refine_iter)
    try:
        nets = open_networks(model)
        sampler = _sampler(model, t1, t2, steps_before, steps_after)
        doc = evaluate(nets, data, split, per_type, candidates, sampler, seed, log=typer.echo, refine=ref)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc))
    dump(out / "evaluation.json", doc)
    plot_examples(nets, data, out / "examples.png", sampler, refine=ref)
    typer.echo(table_markdown(doc["table"]))
    typer.echo(f"wrote {out / 'evaluation.json'} and {out / 'examples.png'}")


@app.command()
def reconstruction(
    model: Path = typer.Option(..., help="Training run directory (needs the structure encoder)."),
    data: Path = typer.Option(..., help="Dataset directory."),
    split: str = typer.Option("test", help=SPLIT_HELP),
    per_type: Optional[int] = typer.Option(20, help="At most N structures per type."),
    out: Path = typer.Option(Path("eval"), help="Output directory (reconstruction.json)."),
):
    """The structure VAE's ceiling: true structure -> encoder -> decoder -> recovery."""
    if not (model / "config.json").exists():
        raise fail(f"{model}: not a training run (config.json missing); the encoder is not exported")
    require_extra("cbldm-eval reconstruction", "train")
    from cbldm.training.dataset import DatasetError
    from cbldm.training.evaluate import dump, reconstruction as run_rec, table_markdown
    try:
        doc = run_rec(model, data, split, per_type, log=typer.echo)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc))
    dump(out / "reconstruction.json", doc)
    typer.echo(table_markdown(doc["table"]))
    typer.echo("median RMSD (A, right atom count): " + ", ".join(
        f"{t} {r['rmsd_A_median']:.3f}" for t, r in doc["table"].items()))
    typer.echo(f"wrote {out / 'reconstruction.json'}")


@app.command()
def sweep(
    model: Path = typer.Option(..., help="Training run directory (the choice is saved there) or model dir."),
    data: Path = typer.Option(..., help="Dataset directory."),
    per_type: int = typer.Option(10, help="PDFs per type (validation split)."),
    candidates: int = typer.Option(2, help="Candidates per PDF, best by Rwp."),
    out: Path = typer.Option(Path("eval"), help="Output directory (sweep.json, sweep.png)."),
    refine: int = typer.Option(0, "--refine", help=REFINE_HELP + " Off by default: the sweep "
                               "compares samplers, and refinement narrows their differences."),
    refine_iter: int = typer.Option(100, help=ITER_HELP),
    quick: bool = typer.Option(False, help="Six settings instead of twelve (limits, shipped kind, full)."),
):
    """Rwp vs U-Net calls over skip-step settings (validation split); saves the chosen default."""
    _needs("sweep", model, data=True)
    from cbldm.training.evaluate import SWEEP, SWEEP_QUICK, dump, open_networks, plot_sweep, sweep as run_sweep

    nets = open_networks(model)
    doc = run_sweep(nets, data, per_type, candidates, clip=_sampler(model, None, None, None, None).clip,
                    log=typer.echo, refine=refine_config(refine, refine_iter),
                    configs=SWEEP_QUICK if quick else SWEEP)
    dump(out / "sweep.json", doc)
    plot_sweep(doc, out / "sweep.png")
    if (model / "config.json").exists():
        dump(model / "sampler.json", {"sampler": doc["chosen"]["sampler"], "from": "cbldm-eval sweep"})
    c = doc["chosen"]
    typer.echo(f"chosen: {c['sampler']} ({c['unet_calls']} U-Net calls, Rwp {c['rwp']:.4f}); "
               f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}")


@app.command()
def latents(
    model: Path = typer.Option(..., help="Training run directory."),
    data: Path = typer.Option(..., help="Dataset directory."),
    split: str = typer.Option("val", help=SPLIT_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("eval"), help="Output directory (latents.json)."),
):
    """Sampled latents vs the encoder's, per sampler: right-shape rate and RMS error (no recovery)."""
    require_extra("cbldm-eval latents", "train")
    from cbldm.export.onnx_export import ExportError
    from cbldm.training.dataset import DatasetError
    from cbldm.training.evaluate import dump, latent_generation

    try:
        doc = latent_generation(model, data, split, device, log=typer.echo)
    except (DatasetError, ExportError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc))
    dump(out / "latents.json", doc)
    typer.echo(f"nearest other shape: {doc['nearest_other_shape_rms']:.3f} RMS per dim; wrote {out / 'latents.json'}")


@app.command()
def experimental(
    model: Path = typer.Option(..., help="Training run directory or exported model directory."),
    files: list[Path] = typer.Argument(..., metavar="FILE", help="Measured PDF files."),
    candidates: int = typer.Option(8, help="Candidates per PDF, best by Rwp."),
    out: Path = typer.Option(Path("eval/experimental"), help="Output directory (JSON, PNG per file)."),
    refine: int = typer.Option(8, "--refine", help=REFINE_HELP),
    refine_iter: int = typer.Option(100, help=ITER_HELP),
):
    """Predicted structure and Rwp for measured PDFs, with plots."""
    _needs("experimental", model, data=False)
    from cbldm.training.evaluate import dump, experimental as run_exp, open_networks

    nets = open_networks(model)
    res = run_exp(nets, files, out, _sampler(model, None, None, None, None), candidates,
                  refine=refine_config(refine, refine_iter))
    dump(out / "experimental.json", {"results": res})
    for r in res:
        typer.echo(f"{r['file']}: {r['element']}{r['n_atoms']}, Rwp {r['rwp']:.3f} -> {out / r['plot']}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
