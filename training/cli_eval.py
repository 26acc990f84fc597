"""cbldm-eval: accuracy on unseen shapes and out of recipe, library vs networks vs both."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cbldm.runtime.cliutil import EXIT_USAGE, fail, refine_config, require_extra, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evaluate a model (and the cluster library) on PDFs with known structures.")

REFINE_HELP = "Refine the coordinates of the best N candidates (0: off)."
SPLIT_HELP = "Dataset split: test (unseen shapes), val (unseen, for tuning) or train (seen shapes)."
SEED_HELP = "Sampling seed."
ITER_HELP = "L-BFGS iterations of the refinement."
SOURCES_HELP = "Comma-separated: library, model, both (each is a column of the tables)."
LIBRARY_HELP = "Cluster library (default: the model's, else the shipped model's)."
MODEL_HELP = "Training run directory or exported model directory."


# options accuracy and offrecipe share (typer reads a default OptionInfo as is)
SOURCES = typer.Option("library,model,both", help=SOURCES_HELP)
CANDIDATES = typer.Option(4, "--candidates", "-k", help="Samples from the networks per PDF.")
LIBRARY = typer.Option(None, help=LIBRARY_HELP)
SEED = typer.Option(0, help=SEED_HELP)
REFINE = typer.Option(4, "--refine", help=REFINE_HELP)
REFINE_ITER = typer.Option(100, help=ITER_HELP)
DISORDER = typer.Option(True, help="Also refine with part of Biso left to the coordinates (the runtime's "
                                   "default); --no-disorder to compare.")
SEARCH = typer.Option(1, help="Atom-count and layer searches from the best fit and from the next best fits "
                                "of other atom counts, N fits in all (the runtime's: 1; a walk's start and "
                                "an unstrained copy are searched besides).")
ENVELOPE = typer.Option(True, help="Beside a best fit of 1,500 atoms or more, a lattice sphere of fitted "
                                   "diameter, and icosahedra and decahedra walked past the library (the "
                                   "runtime's default); --no-envelope to compare.")
RANK = typer.Option("criterion", help="How the answer is chosen: criterion (a refinement must pay for its "
                                      "coordinates; the runtime's) or rwp (lowest refined Rwp; to compare).")


def _needs(command: str, model: Path, data: bool) -> None:
    """A training run is read with torch (the 'train' extra); a dataset with h5py ('data');
    an exported model needs neither. Checked before anything is read or written."""
    if not (model / "manifest.json").exists():
        require_extra(f"cbldm-eval {command}", "train")
    elif data:
        require_extra(f"cbldm-eval {command}", "data")


def _open(model: Path, library: Optional[Path]):
    """Networks, sampler, library."""
    from cbldm.runtime.library import Library, LibraryError
    from cbldm.runtime.sampling import SamplerConfig

    try:
        if (model / "manifest.json").exists():
            from cbldm.runtime.backends import ModelError, load_model

            try:
                nets = load_model(model, backend="cpu")
            except ModelError as exc:
                raise fail(str(exc))
            sampler = SamplerConfig(**nets.manifest["sampler"])
            lib = Library(library) if library else nets.library
        else:
            from cbldm.training.runs import RunError, TorchNetworks, default_sampler

            try:
                nets = TorchNetworks(model)
            except RunError as exc:
                raise fail(str(exc))
            sampler = default_sampler(model)
            if library is None:
                from cbldm.models import default_model_dir

                library = default_model_dir() / "library.npz"
            lib = Library(library)
    except LibraryError as exc:
        raise fail(str(exc))
    return nets, sampler, lib


def _sources(text: str) -> tuple[str, ...]:
    from cbldm.runtime.pipeline import SOURCES

    out = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in out if s not in SOURCES]
    if bad or not out:
        raise fail(f"--sources {text!r}: give some of {', '.join(SOURCES)}", EXIT_USAGE)
    return out


def _report(doc: dict, groups: list[str], out: Path, name: str) -> None:
    from cbldm.training.evaluate import dump, table_markdown

    dump(out / f"{name}.json", doc)
    md = f"{doc['what']}\n\n{table_markdown(doc, groups)}\n"
    (out / f"{name}.md").write_text(md)
    typer.echo(md)
    typer.echo(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")


@app.command()
def accuracy(
    model: Path = typer.Option(..., help=MODEL_HELP),
    data: Path = typer.Option(..., help="Dataset directory (cbldm-data generate)."),
    split: str = typer.Option("test", help=SPLIT_HELP),
    per_type: Optional[int] = typer.Option(20, help="At most N structures per type."),
    sources: str = SOURCES, candidates: int = CANDIDATES, library: Optional[Path] = LIBRARY,
    out: Path = typer.Option(Path("eval"), help="Output directory (accuracy.json, accuracy.md)."),
    seed: int = SEED, refine: int = REFINE, refine_iter: int = REFINE_ITER, rank: str = RANK,
    disorder: bool = DISORDER, search: int = SEARCH, envelope: bool = ENVELOPE,
):
    """Simulated PDFs of a dataset split, per structure type: exact atom counts, pair-distance
    error, RMSD, Rwp, for the library, the networks and both."""
    _needs("accuracy", model, data=True)
    from cbldm.training.dataset import DatasetError
    from cbldm.training.evaluate import ORDER, dataset_items, evaluate

    if split not in ("train", "val", "test"):
        raise fail(f"--split {split!r}: choose train, val or test", EXIT_USAGE)
    srcs = _sources(sources)
    ref = refine_config(refine, refine_iter, rank, disorder, search, envelope)
    nets, sampler, lib = _open(model, library)
    try:
        items = dataset_items(data, split, per_type, seed)
    except DatasetError as exc:
        raise fail(str(exc))
    what = {"test": "unseen shapes (test split: shapes the networks never saw; every recipe shape is in "
                    "the library)", "val": "unseen shapes (validation split)",
            "train": "seen shapes (training split, the paper's protocol)"}[split]
    doc = evaluate(nets, lib, items, ORDER, what, srcs, candidates, sampler, seed, ref, log=typer.echo)
    doc.update({"model": str(model), "data": str(data), "split": split, "per_type": per_type})
    _report(doc, ORDER, out, "accuracy")


@app.command()
def offrecipe(
    model: Path = typer.Option(..., help=MODEL_HELP),
    set_dir: Path = typer.Option(..., "--set", help="Out-of-recipe set (cbldm-data offrecipe)."),
    groups: Optional[str] = typer.Option(None, help="Comma-separated groups (default: all)."),
    sources: str = SOURCES, candidates: int = CANDIDATES, library: Optional[Path] = LIBRARY,
    out: Path = typer.Option(Path("eval"), help="Output directory (offrecipe.json, offrecipe.md)."),
    seed: int = SEED, refine: int = REFINE, refine_iter: int = REFINE_ITER, rank: str = RANK,
    disorder: bool = DISORDER, search: int = SEARCH, envelope: bool = ENVELOPE,
    known_qdamp: bool = typer.Option(False, "--known-qdamp",
                                     help="Hold each file's Qdamp at its simulated value, as `cbldm-run "
                                          "--qdamp` does for a calibrated instrument (default: refined)."),
    qmin: Optional[float] = typer.Option(None, help="Read every file with this Qmin, as `cbldm-run --qmin` "
                                                    "(default: the header's, else fitted)."),
    qmax: Optional[float] = typer.Option(None, help="Read every file with this Qmax, as `cbldm-run --qmax` "
                                                    "(default: the header's, else the data's band edge)."),
):
    """A set of PDFs with known structures (the out-of-recipe set, the held-out families, the tuning
    set), per group: the same metrics, each PDF read like a measured file."""
    _needs("offrecipe", model, data=False)
    from cbldm.training.evaluate import OFF_ORDER, evaluate, offrecipe_items

    srcs = _sources(sources)
    ref = refine_config(refine, refine_iter, rank, disorder, search, envelope)
    nets, sampler, lib = _open(model, library)
    try:
        items = offrecipe_items(set_dir, groups.split(",") if groups else None, known_qdamp, qmin, qmax)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc))
    what = f"the PDFs of {set_dir}" + (", Qdamp known" if known_qdamp else "") + \
        "".join(f", {k} {v:g} given" for k, v in (("Qmin", qmin), ("Qmax", qmax)) if v is not None)
    doc = evaluate(nets, lib, items, OFF_ORDER, what, srcs, candidates, sampler, seed, ref, log=typer.echo)
    doc.update({"model": str(model), "set": str(set_dir), "known_qdamp": known_qdamp, "qmin": qmin, "qmax": qmax})
    _report(doc, OFF_ORDER, out, "offrecipe")


@app.command()
def criteria(
    model: Path = typer.Option(..., help=MODEL_HELP),
    set_dir: Path = typer.Option(..., "--set", help="Out-of-recipe set (cbldm-data offrecipe)."),
    groups: Optional[str] = typer.Option("perturbed,physics,unseen-family", help="Comma-separated groups."),
    candidates: int = typer.Option(4, "--candidates", "-k", help="Samples from the networks per PDF."),
    library: Optional[Path] = typer.Option(None, help=LIBRARY_HELP),
    out: Path = typer.Option(Path("eval"), help="Output directory (criteria.json)."),
    seed: int = typer.Option(0, help=SEED_HELP),
):
    """Which ranking picks the right atom count: the rigid physics fit, restrained refinement
    or free refinement of every candidate's coordinates."""
    _needs("criteria", model, data=False)
    from cbldm.runtime.pipeline import RefineConfig
    from cbldm.training.evaluate import criteria as run_criteria, dump, offrecipe_items, run_items

    nets, sampler, lib = _open(model, library)
    items = offrecipe_items(set_dir, groups.split(",") if groups else None)
    top = candidates + 8
    rows_r = run_items(nets, items, "both", lib, sampler, candidates, seed, RefineConfig(top=top), log=typer.echo)
    rows_f = run_items(nets, items, "both", lib, sampler, candidates, seed,
                       RefineConfig(top=top, restrain=False, min_distance=0.0), log=typer.echo)
    doc = {"what": "atom count picked by each ranking criterion (all candidates refined)",
           "groups": groups, "n": len(items), "criteria": run_criteria(rows_r, rows_f)}
    dump(out / "criteria.json", doc)
    for k, v in doc["criteria"].items():
        typer.echo(f"{k:24s} exact atom count {100 * v['exact_count']:.0f} % of {v['n']}")


@app.command()
def sweep(
    model: Path = typer.Option(..., help="Training run directory (the choice is saved there) or model dir."),
    data: Path = typer.Option(..., help="Dataset directory."),
    per_type: int = typer.Option(5, help="PDFs per type (validation split: unseen shapes)."),
    candidates: int = typer.Option(2, help="Samples per PDF."),
    out: Path = typer.Option(Path("eval"), help="Output directory (sweep.json)."),
):
    """Networks alone under several skip-step settings and the full sampler (validation shapes);
    saves the cheapest setting within 5 points of the best exact-count rate to RUN/sampler.json."""
    _needs("sweep", model, data=True)
    from cbldm.training.evaluate import dataset_items, dump, sweep as run_sweep

    nets, sampler, _ = _open(model, None)
    doc = run_sweep(nets, dataset_items(data, "val", per_type), candidates, clip=sampler.clip, log=typer.echo)
    dump(out / "sweep.json", doc)
    if (model / "config.json").exists():
        dump(model / "sampler.json", {"sampler": doc["chosen"]["sampler"], "from": "cbldm-eval sweep"})
    c = doc["chosen"]
    typer.echo(f"chosen: {json.dumps(c['sampler'])} ({c['unet_calls']} U-Net calls); wrote {out / 'sweep.json'}")


@app.command()
def summary(
    model: Path = typer.Option(..., help="Model directory: writes MODEL/evaluation.json (what `cbldm-run info` shows)."),
    data: Path = typer.Option(..., help="Dataset directory (its split's test and validation shapes are listed)."),
    unseen: Path = typer.Option(..., help="accuracy.json of `cbldm-eval accuracy` (unseen shapes)."),
    offrecipe: Path = typer.Option(..., help="offrecipe.json of `cbldm-eval offrecipe` (the out-of-recipe set)."),
    families: Optional[Path] = typer.Option(None, help="offrecipe.json of the held-out families set (a)."),
    families_b: Optional[Path] = typer.Option(None, help="offrecipe.json of the second held-out families set (b)."),
    offrecipe_2: Optional[Path] = typer.Option(None, "--offrecipe-2",
                                               help="offrecipe.json of a second draw of the out-of-recipe "
                                                    "set (another --seed): how much of its figure is the draw."),
):
    """Ship the tables of the evaluations beside the model: per test set and source, the totals and
    groups (no per-PDF rows; those stay in the evaluation's own files)."""
    import datetime

    from cbldm.runtime.fileutil import atomic_write_text
    from cbldm.training.dataset import DatasetError, load_manifest

    def tables(path: Path) -> dict:
        try:
            doc = json.loads(path.read_text())
            out = {k: doc[k] for k in ("what", "n", "candidates", "refine")} | {
                "sources": {s: v["table"] for s, v in doc["sources"].items()}}
            for src, t in out["sources"].items():   # what `cbldm-run info` reads
                missing = {"n", "exact_count", "pair_distance_error_A", "rwp"} - set(t["total"])
                if missing:
                    raise KeyError(f"{src} total lacks {', '.join(sorted(missing))}")
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise fail(f"{path}: not a cbldm-eval result ({type(exc).__name__}: {exc})")

    if not (model / "manifest.json").is_file():
        raise fail(f"{model}: not a model directory (no manifest.json)", EXIT_USAGE)
    try:
        split = load_manifest(data)["split_shapes"]
    except DatasetError as exc:
        raise fail(str(exc))
    except (KeyError, TypeError):
        raise fail(f"{data}: its manifest has no shape split (made by an older cbldm-data generate?)")
    doc = {"format": "cbldm-evaluation/1",
           "what": f"tables of cbldm-eval accuracy (unseen shapes) and cbldm-eval offrecipe ({model}, "
                   f"{datetime.date.today()}); per-PDF results under eval/ in the repository",
           "test_shapes": sorted(split["test"]), "validation_shapes": sorted(split["val"]),
           "unseen": tables(unseen), "offrecipe": tables(offrecipe)}
    if families is not None:
        doc["families"] = tables(families)
    if families_b is not None:
        doc["families_b"] = tables(families_b)
    if offrecipe_2 is not None:
        doc["offrecipe_2"] = tables(offrecipe_2)
    atomic_write_text(model / "evaluation.json", json.dumps(doc, indent=1))
    typer.echo(f"wrote {model / 'evaluation.json'}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
