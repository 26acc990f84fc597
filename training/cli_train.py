"""cbldm-train: the three training stages, in order, each freezing what came before."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import EXIT_USAGE, fail, require_extra, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train the CbLDM networks: condition VAE, structure VAE + prior, latent denoiser.")


def _epochs(text: Optional[str], stages: list[str]) -> dict[str, int]:
    """"N" for every stage named, or one number per stage: "10,30,60" for all three."""
    if text is None:
        return {}
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise fail(f"--epochs {text!r}: expected N or one integer per stage", EXIT_USAGE)
    if len(values) == 1:
        values = values * len(stages)
    if len(values) != len(stages) or min(values) < 1:
        raise fail(f"--epochs {text!r}: give 1 or {len(stages)} positive integers "
                   f"({', '.join(stages)})", EXIT_USAGE)
    return dict(zip(stages, values))


def _overrides(items: list[str]) -> tuple[dict, dict]:
    """--set model.KEY=VALUE / train.KEY=VALUE / train.KEY.SUB=VALUE (VALUE read as JSON)."""
    from cbldm.training.models import ModelConfig
    from cbldm.training.train import TrainConfig

    model, train = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        scope, _, name = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        fields = {"model": ModelConfig.__dataclass_fields__, "train": TrainConfig.__dataclass_fields__}.get(scope)
        if not sep or fields is None or name.split(".")[0] not in fields:
            raise fail(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD[.KEY]=VALUE with a known "
                       "field", EXIT_USAGE)
        (model if scope == "model" else train)[name] = value
    return model, train


def _train(stages: list[str], data: Path, out: Path, preset: str, epochs: Optional[str], resume: bool,
           seed: int, augment: bool, max_train: Optional[int], device: Optional[str], sets: list[str]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cbldm.training.dataset import DatasetError
    from cbldm.training.train import TrainConfig, Trainer

    per_stage = _epochs(epochs, stages)
    model_set, train_set = _overrides(sets)
    if resume and (model_set or train_set):
        raise fail("--set applies to a new run; a resumed run keeps its recorded config", EXIT_USAGE)
    tcfg = TrainConfig(preset=preset, seed=seed, augment=augment, max_train=max_train)
    for name, value in train_set.items():
        head, _, sub = name.partition(".")
        if sub:  # a per-stage entry, e.g. train.beta.structure
            getattr(tcfg, head)[sub] = value
        else:
            setattr(tcfg, head, value)
    try:
        trainer = Trainer(out, data, tcfg, resume=resume, device=device, log=lambda m: None,
                          model_overrides=model_set)
    except (FileExistsError, ValueError, TypeError, DatasetError) as exc:
        raise fail(str(exc))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=trainer.rank != 0) as bar:
        task = bar.add_task("", total=None, info="")
        trainer.log = lambda msg: bar.console.print(msg)

        def progress(stage, epoch, b, n, loss, rate):
            bar.update(task, description=f"{stage} epoch {epoch + 1}", completed=b, total=n,
                       info=f"loss {loss:.4g}  {rate:.0f}/s")

        for stage in stages:
            trainer.run_stage(stage, per_stage.get(stage), progress)
    typer.echo(f"{out}: stages done {', '.join(trainer.done)}; params "
               + json.dumps(trainer.model.param_counts()))


def _command(stages: list[str]):
    def cmd(
        data: Path = typer.Option(..., help="Dataset directory from cbldm-data generate."),
        out: Path = typer.Option(..., help="Run directory (weights, config, log)."),
        preset: str = typer.Option("edge", help="Model size: edge, paper or tiny."),
        epochs: Optional[str] = typer.Option(None, help="Epochs: N for each stage, or one per stage "
                                             "(all: \"10,30,60\"); default the preset's."),
        resume: bool = typer.Option(False, help="Continue an interrupted run in OUT."),
        seed: int = typer.Option(0, help="Seed of initialisation, data order and augmentation."),
        augment: bool = typer.Option(True, help="Randomised physics augmentation of the PDFs."),
        max_train: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if present)."),
        sets: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help="Override a config field of a new run: "
                                       "model.unet_channels=64, train.beta.structure=1e-3 (repeatable)."),
    ):
        if preset not in ("edge", "paper", "tiny"):
            raise fail(f"unknown preset {preset!r} (edge, paper, tiny)", EXIT_USAGE)
        require_extra("cbldm-train", "train")
        _train(stages, data, out, preset, epochs, resume, seed, augment, max_train, device, sets)
    return cmd


app.command("condition", help="Stage 1: the condition VAE.")(_command(["condition"]))
app.command("structure", help="Stage 2: structure VAE and conditional prior (condition VAE frozen).")(_command(["structure"]))
app.command("denoiser", help="Stage 3: latent U-Net (both VAEs frozen).")(_command(["denoiser"]))
app.command("all", help="All three stages in order.")(_command(["condition", "structure", "denoiser"]))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
