"""cbldm-train: the three training stages, in order, each freezing what came before."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import EXIT_USAGE, fail, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train the CbLDM networks: condition VAE, structure VAE + prior, latent denoiser.")


def _train(stages: list[str], data: Path, out: Path, preset: str, epochs: Optional[int], resume: bool,
           seed: int, augment: bool, max_train: Optional[int], device: Optional[str]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cbldm.training.dataset import DatasetError
    from cbldm.training.train import TrainConfig, Trainer

    tcfg = TrainConfig(preset=preset, seed=seed, augment=augment, max_train=max_train)
    try:
        trainer = Trainer(out, data, tcfg, resume=resume, device=device, log=lambda m: None)
    except (FileExistsError, ValueError, DatasetError) as exc:
        raise fail(str(exc))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=trainer.rank != 0) as bar:
        task = bar.add_task("", total=None, info="")
        trainer.log = lambda msg: bar.console.print(msg)

        def progress(stage, epoch, b, n, loss, rate):
            bar.update(task, description=f"{stage} epoch {epoch + 1}", completed=b, total=n,
                       info=f"loss {loss:.4g}  {rate:.0f}/s")

        for stage in stages:
            trainer.run_stage(stage, epochs, progress)
    typer.echo(f"{out}: stages done {', '.join(trainer.done)}; params "
               + json.dumps(trainer.model.param_counts()))


def _command(stages: list[str]):
    def cmd(
        data: Path = typer.Option(..., help="Dataset directory from cbldm-data generate."),
        out: Path = typer.Option(..., help="Run directory (weights, config, log)."),
        preset: str = typer.Option("edge", help="Model size: edge, paper or tiny."),
        epochs: Optional[int] = typer.Option(None, help="Epochs per stage (default: the preset's)."),
        resume: bool = typer.Option(False, help="Continue an interrupted run in OUT."),
        seed: int = typer.Option(0, help="Seed of initialisation, data order and augmentation."),
        augment: bool = typer.Option(True, help="Randomised physics augmentation of the PDFs."),
        max_train: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if present)."),
    ):
        if preset not in ("edge", "paper", "tiny"):
            raise fail(f"unknown preset {preset!r} (edge, paper, tiny)", EXIT_USAGE)
        _train(stages, data, out, preset, epochs, resume, seed, augment, max_train, device)
    return cmd


app.command("condition", help="Stage 1: the condition VAE.")(_command(["condition"]))
app.command("structure", help="Stage 2: structure VAE and conditional prior (condition VAE frozen).")(_command(["structure"]))
app.command("denoiser", help="Stage 3: latent U-Net (both VAEs frozen).")(_command(["denoiser"]))
app.command("all", help="All three stages in order.")(_command(["condition", "structure", "denoiser"]))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
