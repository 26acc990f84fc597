"""Process one PDF file end to end and write its results atomically, never over old ones.

Per input ``<stem>``: ``<stem>.xyz`` (best structure), ``<stem>.fit.gr`` (its PDF, scaled to
the data), ``<stem>.json`` (atom count, Rwp, timings, model hash, sampler, all candidates),
``<stem>.png`` (data vs fit with difference curve, and the structure). If ``<stem>.json``
already exists the next free ``<stem>-2``, ``<stem>-3``... is used.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbldm.runtime.backends import LoadedModel
from cbldm.runtime.fileutil import atomic_write
from cbldm.runtime.pdf import rgrid
from cbldm.runtime.pdfio import PDFData, PDFInputError, read_pdf, resample, write_gr
from cbldm.runtime.pipeline import Prediction, RefineConfig, min_pair_distance, predict
from cbldm.runtime.preprocess import NoPeakError
from cbldm.runtime.sampling import SamplerConfig

SUFFIXES = (".xyz", ".fit.gr", ".json", ".png")


@dataclass
class FileResult:
    source: str
    stem: str
    n_atoms: int
    rwp: float
    seconds: float
    outputs: list[str]


def free_stem(outdir: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... whichever has no results in ``outdir`` yet."""
    candidate, k = stem, 1
    while any((outdir / f"{candidate}{s}").exists() for s in SUFFIXES):
        k += 1
        candidate = f"{stem}-{k}"
    return candidate


def element_for(data: PDFData, override: str | None, default: str = "Au") -> str:
    from cbldm.runtime.formfactors import check_element

    el = override or data.element or default
    try:
        return check_element(el)
    except ValueError:
        raise PDFInputError(data.path, f"unknown element {el!r} (use --element)") from None


def process_file(path: Path, model: LoadedModel, outdir: Path, sampler: SamplerConfig,
                 candidates: int = 4, element: str | None = None, seed: int = 0,
                 plot: bool = True, refine: RefineConfig = RefineConfig()) -> FileResult:
    """Read, predict, write. Raises PDFInputError for bad input (nothing is written then)."""
    t_start = time.perf_counter()
    data = read_pdf(path)
    el = element_for(data, element)
    g, record = resample(data, rgrid())
    t_read = time.perf_counter() - t_start
    try:  # the first-shell peak is read in the model's preprocessing, before any output
        pred = predict(model, g, sampler, candidates=candidates, element=el, seed=seed, refine=refine)
    except NoPeakError as exc:
        raise PDFInputError(path, f"{exc}: not a metal-particle PDF on an r grid in A?") from None
    outdir.mkdir(parents=True, exist_ok=True)
    stem = free_stem(outdir, Path(path).stem)
    best = pred.best
    outputs, total = _write_outputs(outdir, stem, path, data, g, record, pred, model, el, plot,
                                    t_start, {"read_s": t_read, **pred.timings})
    return FileResult(str(path), stem, best.n_atoms, best.rwp, total, outputs)


def _write_outputs(outdir, stem, path, data, g, record, pred: Prediction, model: LoadedModel,
                   element: str, plot: bool, t_start: float, timings: dict) -> tuple[list[str], float]:
    """xyz, fit.gr and png first; the JSON last, once, with the timings: its presence means
    the result set is complete. ``write_s`` covers every output but the JSON itself."""
    import ase.io
    from ase import Atoms

    t0 = time.perf_counter()
    best = pred.best
    r = rgrid()
    atoms = Atoms(f"{element}{best.n_atoms}", positions=best.xyz)
    comment = f"cbldm prediction for {Path(path).name}: Rwp {best.rwp:.4f}, model {model.hash}"
    atomic_write(outdir / f"{stem}.xyz", lambda p: ase.io.write(p, atoms, format="xyz", comment=comment))
    write_gr(outdir / f"{stem}.fit.gr", r, best.g_calc,
             {"source": str(path), "composition": f"{element}{best.n_atoms}", "rwp": best.rwp,
              "model": model.hash, "what": "PDF of the predicted structure, scaled to the data"},
             title="cbldm-run fit")
    outs = [f"{stem}.xyz", f"{stem}.fit.gr"]
    if plot:
        atomic_write(outdir / f"{stem}.png", lambda p: plot_fit(p, r, g, best.g_calc, best.xyz,
                                                            f"{Path(path).name}: {element}{best.n_atoms}, "
                                                            f"Rwp {best.rwp:.3f}"))
        outs.append(f"{stem}.png")
    timings = {**timings, "write_s": time.perf_counter() - t0}
    timings["total_s"] = time.perf_counter() - t_start
    doc = {
        "source": str(path), "source_format": data.format, "element": element,
        "n_atoms": best.n_atoms, "rwp": best.rwp, "rwp_before_size_fit": best.rwp_unrefined,
        "rwp_before_refinement": best.rwp_size_fit, "refined": best.refined,
        "refine_shift_rms_A": round(best.shift_rms, 4), "size_factor": best.scale,
        # sanity numbers for the reader: metals have no pair far below the first shell, and
        # no atom without a neighbour (atoms beyond the PDF's r range are invisible to Rwp)
        "min_pair_distance_A": round(min_pair_distance(best.xyz), 4) if len(best.xyz) > 1 else None,
        "detached_atoms": detached_atoms(best.xyz),
        "model": {"hash": model.hash, "dir": str(model.model_dir), "backend": model.backend,
                  "precision": model.precision, "providers": model.providers.get("unet")},
        "sampler": pred.sampler, "resampling": record,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "candidates": [{"rank": i + 1, "n_atoms": c.n_atoms, "rwp": c.rwp, "size_factor": c.scale,
                        "rwp_before_refinement": c.rwp_size_fit, "refined": c.refined,
                        "recovery_loss": c.recovery_loss} for i, c in enumerate(pred.candidates)],
    }
    atomic_write(outdir / f"{stem}.json", lambda p: p.write_text(json.dumps(doc, indent=1)))
    return outs + [f"{stem}.json"], timings["total_s"]


def detached_atoms(xyz: np.ndarray, factor: float = 1.25) -> int:
    """Atoms with no neighbour within ``factor`` x the structure's median nearest-neighbour
    distance: the PDF cannot see an atom placed far from the particle, so Rwp won't flag it."""
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return 0
    d, _ = cKDTree(xyz).query(xyz, k=2)
    nn = d[:, 1]
    return int(np.sum(nn > factor * np.median(nn)))


def plot_fit(path: Path, r: np.ndarray, g_obs: np.ndarray, g_fit: np.ndarray, xyz: np.ndarray,
             title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_axes([0.06, 0.13, 0.58, 0.76])
    nz = np.flatnonzero(g_obs)
    rmax = r[nz[-1]] if len(nz) else r[-1]
    sel = r <= rmax
    ax.plot(r[sel], g_obs[sel], color="0.15", lw=1.2, label="data")
    ax.plot(r[sel], g_fit[sel], color="tab:red", lw=1.0, label="predicted structure")
    off = 1.2 * min(g_obs[sel].min(), g_fit[sel].min()) - 0.2 * np.abs(g_obs).max()
    ax.plot(r[sel], g_obs[sel] - g_fit[sel] + off, color="tab:blue", lw=0.9, label="difference (offset)")
    ax.axhline(off, color="tab:blue", lw=0.4, ls=":")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å$^{-2}$)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax3 = fig.add_axes([0.68, 0.08, 0.30, 0.84], projection="3d")
    c = xyz - xyz.mean(0)
    ax3.scatter(c[:, 0], c[:, 1], c[:, 2], s=40, c=np.linalg.norm(c, axis=1), cmap="viridis",
                edgecolors="k", linewidths=0.3, depthshade=True)
    lim = np.abs(c).max() + 1.0
    for setter in (ax3.set_xlim, ax3.set_ylim, ax3.set_zlim):
        setter(-lim, lim)
    ax3.set_box_aspect((1, 1, 1))
    ax3.set_axis_off()
    ax3.set_title(f"{len(xyz)} atoms", fontsize=9)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_error(outdir: Path, path: Path, message: str) -> Path:
    """An error report beside the results: ``<stem>.error.txt`` (next free name)."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem, k = Path(path).stem, 1
    target = outdir / f"{stem}.error.txt"
    while target.exists():
        k += 1
        target = outdir / f"{stem}-{k}.error.txt"
    atomic_write(target, lambda p: p.write_text(message.rstrip() + "\n"))
    return target
