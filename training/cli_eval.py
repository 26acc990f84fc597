"""cbldm-eval: held-out accuracy (Table 2 layout), the skip-step sweep, the measured PDFs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import fail, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evaluate a training run or an exported model on held-out simulated PDFs.")


def _sampler(model: Path, t1, t2, steps_before, steps_after):
    from cbldm.runtime.sampling import SamplerConfig

    base = {}
    for p in (model / "sampler.json", model / "manifest.json"):
        if p.exists():
            doc = json.loads(p.read_text())
            base = doc.get("sampler", doc)
            break
    for k, v in (("t1", t1), ("t2", t2), ("steps_before", steps_before), ("steps_after", steps_after)):
        if v is not None:
            base[k] = v
    return SamplerConfig(**base)


@app.command()
def accuracy(
    model: Path = typer.Option(..., help="Training run directory or exported model directory."),
    data: Path = typer.Option(..., help="Dataset directory."),
    split: str = typer.Option("test"),
    per_type: Optional[int] = typer.Option(100, help="At most N structures per type."),
    candidates: int = typer.Option(4, help="Candidates per PDF, best by Rwp."),
    out: Path = typer.Option(Path("eval"), help="Output directory (JSON, PNG)."),
    t1: Optional[int] = typer.Option(None), t2: Optional[int] = typer.Option(None),
    steps_before: Optional[int] = typer.Option(None), steps_after: Optional[int] = typer.Option(None),
    seed: int = typer.Option(0),
):
    """Rwp per type on held-out structures, atom-count accuracy, pair-distance error."""
    from cbldm.training.dataset import DatasetError
    from cbldm.training.evaluate import dump, evaluate, open_networks, plot_examples, table_markdown

    try:
        nets = open_networks(model)
        sampler = _sampler(model, t1, t2, steps_before, steps_after)
        doc = evaluate(nets, data, split, per_type, candidates, sampler, seed, log=typer.echo)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc))
    dump(out / "evaluation.json", doc)
    plot_examples(nets, data, out / "examples.png", sampler)
    typer.echo(table_markdown(doc["table"]))
    typer.echo(f"wrote {out / 'evaluation.json'} and {out / 'examples.png'}")


@app.command()
def sweep(
    model: Path = typer.Option(..., help="Training run directory (the choice is saved there) or model dir."),
    data: Path = typer.Option(..., help="Dataset directory."),
    per_type: int = typer.Option(10), candidates: int = typer.Option(2),
    out: Path = typer.Option(Path("eval")),
):
    """Rwp vs U-Net calls over skip-step settings (validation split); saves the chosen default."""
    from cbldm.training.evaluate import dump, open_networks, plot_sweep, sweep as run_sweep

    nets = open_networks(model)
    doc = run_sweep(nets, data, per_type, candidates, log=typer.echo)
    dump(out / "sweep.json", doc)
    plot_sweep(doc, out / "sweep.png")
    if (model / "config.json").exists():
        dump(model / "sampler.json", {"sampler": doc["chosen"]["sampler"], "from": "cbldm-eval sweep"})
    c = doc["chosen"]
    typer.echo(f"chosen: {c['sampler']} ({c['unet_calls']} U-Net calls, Rwp {c['rwp']:.4f}); "
               f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}")


@app.command()
def experimental(
    model: Path = typer.Option(...),
    files: list[Path] = typer.Argument(..., help="Measured PDF files."),
    candidates: int = typer.Option(8),
    out: Path = typer.Option(Path("eval/experimental")),
):
    """Predicted structure and Rwp for measured PDFs, with plots."""
    from cbldm.training.evaluate import dump, experimental as run_exp, open_networks

    nets = open_networks(model)
    res = run_exp(nets, files, out, _sampler(model, None, None, None, None), candidates)
    dump(out / "experimental.json", {"results": res})
    for r in res:
        typer.echo(f"{r['file']}: {r['element']}{r['n_atoms']}, Rwp {r['rwp']:.3f} -> {out / r['plot']}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
