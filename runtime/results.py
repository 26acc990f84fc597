"""Process one PDF file end to end and write its results atomically, never over old ones.

Per input ``<stem>``: ``<stem>.xyz`` (best structure), ``<stem>.fit.gr`` (its PDF with the
refined physics, scaled to the data, on the fitted r range), ``<stem>.json`` (verdict and
warnings, atom count, motif, diameter, Rwp, refined physics, every candidate with its
source, timings, model), ``<stem>.png`` (data vs fit over the file's whole r range with the
fitted range marked, and the structure with its first-shell bonds, atoms coloured by
coordination). If ``<stem>.json`` already exists the next free ``<stem>-2``, ``<stem>-3``...
is used.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbldm.runtime.backends import LoadedModel
from cbldm.runtime.fileutil import atomic_write, shown
from cbldm.runtime.fitting import file_physics
from cbldm.runtime.pdfio import PDFData, PDFInputError, read_pdf, write_gr
from cbldm.runtime.pipeline import PDFInput, Prediction, RefineConfig, predict
from cbldm.runtime.sampling import SamplerConfig
from cbldm.runtime.structure import bonds, diameter, motif
from cbldm.runtime.verdict import InputRefused, beyond_noise

SUFFIXES = (".xyz", ".fit.gr", ".json", ".png")


@dataclass
class FileResult:
    source: str
    stem: str
    n_atoms: int
    rwp: float
    verdict: str
    motif: str
    seconds: float
    outputs: list[str]

    warnings: list[str] | None = None
    rwp_refined_unjustified: float | None = None
    element_assumed: str | None = None   # the element taken by default: the header names none
    source_sha256: str = ""              # the content answered (a watched file may change meanwhile)

    def line(self) -> str:
        more = len(self.warnings or []) - 1
        why = f" ({self.warnings[0]}{f'; {more} more in the JSON' if more > 0 else ''})" if self.warnings else ""
        # a reader comparing with a PDFgui refinement should know a lower Rwp was reached and why it is not reported
        undone = "" if self.rwp_refined_unjustified is None else \
            f" (refined coordinates reached {self.rwp_refined_unjustified:.3f}, too little gain for their number)"
        # the element only labels the answer, but a Pt file answered "Au7707" should say why
        el = "" if self.element_assumed is None else \
            f" ({self.element_assumed} assumed: the header names no composition; give --element)"
        return f"{self.n_atoms} atoms{el}, {self.motif}, Rwp {self.rwp:.3f}{undone}, {self.verdict.upper()}{why}"


def free_stem(outdir: Path, stem: str, suffixes: tuple[str, ...] = SUFFIXES) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... whichever has no file with ``suffixes`` (the
    results') in ``outdir`` yet."""
    candidate, k = stem, 1
    while any((outdir / f"{candidate}{s}").exists() for s in suffixes):
        k += 1
        candidate = f"{stem}-{k}"
    return candidate


def element_for(data: PDFData, override: str | None,
                default: str = "Au") -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The particle's element, and the other metals and the non-metals of the header's formula:
    ``--element``, else the most abundant metal of the composition, else ``default``. Ligand
    groups in parentheses and what follows the formula (a support, a solvent, words) are said
    in the data's notes; a composition that is no formula, or names no metal, is refused
    unless ``--element`` is given (no metal lattice describes such a sample)."""
    from cbldm.runtime.formfactors import check_metal

    comp = data.composition
    text = None if comp is None else comp.text
    if override:
        data.meta.setdefault("_element_from", "option")
        try:
            el = check_metal(override)
        except ValueError as exc:
            raise PDFInputError(data.path, f"--element {override!r}: {exc}") from None
        if comp is None:
            return el, (), ()
        if comp.unread or el not in comp.formula:
            data.notes.append(f"--element {el} given: the header's composition {text!r} is not used")
            return el, (), ()
    elif comp is None:
        data.meta.setdefault("_element_from", f"default ({default}; give --element)")
        return default, (), ()
    elif comp.unread:
        raise PDFInputError(data.path, f"the file's composition {text!r} is not a chemical formula cbldm "
                                       f"reads (at {comp.unread!r}; give --element)")
    elif not comp.metals:
        raise PDFInputError(data.path, f"the file's composition {text!r} names no metal: cbldm answers metal "
                                       "nanoparticles (give --element)")
    else:
        el = comp.metals[0]
        data.meta.setdefault("_element_from", "file header")
    if comp.groups:
        data.notes.append(f"composition {text!r}: {', '.join(comp.groups)} in parentheses (ligands) not modelled")
    if comp.rest:
        data.notes.append(f"composition {text!r}: {comp.rest!r} after the formula (support, solvent or words) "
                          "not modelled")
    return el, tuple(m for m in comp.metals if m != el), tuple(comp.non_metals)


def read_input(path: Path, element: str | None = None, qmin: float | None = None,
               qmax: float | None = None, rmin: float | None = None,
               rmax: float | None = None, qdamp: float | None = None) -> tuple[PDFData, PDFInput]:
    data = read_pdf(path)
    el, alloy, non_metals = element_for(data, element)
    try:
        phys = file_physics(data.meta, data.r, qmin, qmax, rmin, rmax, qdamp=qdamp, g=data.g)
    except ValueError as exc:
        raise PDFInputError(path, str(exc)) from None
    if phys.rmax - phys.rmin < 3.0:
        raise PDFInputError(path, f"the fit range {phys.rmin:g}-{phys.rmax:g} A is too short")
    return data, PDFInput(data.r, data.g, el, phys, str(path), alloy, non_metals)


def process_file(path: Path, model: LoadedModel, outdir: Path, sampler: SamplerConfig,
                 candidates: int = 4, element: str | None = None, seed: int = 0,
                 plot: bool = True, refine: RefineConfig = RefineConfig(), source: str = "both",
                 physics: dict | None = None) -> FileResult:
    """Read, predict, write. Raises PDFInputError for bad input (nothing is written then).
    ``physics``: overrides of qmin, qmax, rmin, rmax, qdamp (else the file's header, else defaults;
    Qdamp else refined)."""
    t_start = time.perf_counter()
    data, pdf = read_input(path, element, **(physics or {}))
    t_read = time.perf_counter() - t_start
    try:
        pred = predict(model, pdf, sampler, candidates=candidates, seed=seed, refine=refine,
                       source=source, library=model.library, schedule=model.schedule)
    except InputRefused as exc:
        raise PDFInputError(path, str(exc).split(": ", 1)[-1]) from None
    outdir.mkdir(parents=True, exist_ok=True)
    stem = free_stem(outdir, Path(path).stem)
    outputs, total, doc = _write_outputs(outdir, stem, path, data, pdf, pred, model, plot, t_start,
                                         {"read_s": t_read, **pred.timings})
    assumed = pdf.element if str(data.meta.get("_element_from", "")).startswith("default") else None
    return FileResult(str(path), stem, pred.best.n_atoms, pred.best.rwp, pred.verdict.verdict,
                      doc["motif"], total, outputs, pred.verdict.warnings, pred.best.rwp_refined_unjustified,
                      assumed, data.sha256)


def describe(pred: Prediction) -> dict:
    """The answer in words and numbers (shared by the JSON and the evaluation)."""
    best = pred.best
    # a refinement's static displacements (0.1 A rms, a few per cent of a bond) cross the fixed
    # bond cutoff of the common-neighbour analysis: a refined hcp prism read as "amorphous"; the
    # motif is the one of the lattice the refinement started from and held within max_shift
    # a lattice sphere is its lattice (and common-neighbour analysis of 50,000 atoms takes seconds)
    m = {"motif": best.motif, "signatures": {}} if best.envelope is not None else motif(best.unrefined_xyz)
    return {"n_atoms": best.n_atoms, "motif": m["motif"], "cna_signatures": m["signatures"],
            "motif_of_library_entry": best.motif, "diameter_A": round(diameter(best.xyz), 2),
            "answer_source": best.source, "answer_label": best.label}


def _write_outputs(outdir, stem, path, data: PDFData, pdf: PDFInput, pred: Prediction,
                   model: LoadedModel, plot: bool, t_start: float, timings: dict):
    """xyz, fit.gr and png first; the JSON last, once, with the timings: its presence means
    the result set is complete. ``write_s`` covers every output but the JSON itself."""
    import ase.io
    from ase import Atoms

    t0 = time.perf_counter()
    path = shown(path)     # the outputs are UTF-8 text: a name in another encoding is shown, not written
    best = pred.best
    about = describe(pred)
    v = pred.verdict
    atoms = Atoms(f"{pdf.element}{best.n_atoms}", positions=best.xyz)
    comment = (f"cbldm answer for {Path(path).name}: {about['motif']}, Rwp {best.rwp:.4f}, "
               f"verdict {v.verdict}, model {model.hash}")
    atomic_write(outdir / f"{stem}.xyz", lambda p: ase.io.write(p, atoms, format="xyz", comment=comment))
    phys = best.fit.params() if best.fit else {}
    write_gr(outdir / f"{stem}.fit.gr", pred.r, best.g_calc,
             {"source": str(path), "composition": f"{pdf.element}{best.n_atoms}", "rwp": best.rwp,
              "verdict": v.verdict, "qmin": pred.physics.qmin, "qmax": pred.physics.qmax,
              **{k: val for k, val in phys.items()}, "model": model.hash,
              "what": "PDF of the answer with the refined physics, scaled to the data"},
             title="cbldm-run fit")
    outs = [f"{stem}.xyz", f"{stem}.fit.gr"]
    if plot:
        title = (f"{Path(path).name}: {pdf.element}{best.n_atoms} {about['motif']}, "
                 f"{about['diameter_A'] / 10:.1f} nm, Rwp {best.rwp:.3f} - {v.verdict.upper()}")
        atomic_write(outdir / f"{stem}.png", lambda p: plot_fit(p, data.r, data.g, pred, title))
        outs.append(f"{stem}.png")
    timings = {**timings, "write_s": time.perf_counter() - t0}
    timings["total_s"] = time.perf_counter() - t_start
    doc = {
        "source": str(path), "source_sha256": data.sha256, "source_format": data.format, "element": pdf.element,
        "element_from": data.meta.get("_element_from", "option"),
        "data": {"source_points": int(len(data.r)), "source_rmin": float(data.r[0]),
                 "source_rmax": float(data.r[-1]), "source_rstep": float(np.median(np.diff(data.r))),
                 "notes": data.notes},
        "verdict": v.verdict, "warnings": v.warnings,
        **about,
        "rwp": best.rwp, "rwp_before_refinement": best.rwp_rigid,
        "refined": best.refined, "refine_shift_rms_A": round(best.shift_rms, 4),
        # refined with part of Biso left to free coordinates (static disorder; pipeline._refine):
        # the coordinates then carry displacements the data do not fix atom by atom
        "refined_disorder": best.disordered,
        # a refinement whose Rwp gain did not pay for its free coordinates (pipeline.criterion)
        "rwp_refined_unjustified": best.rwp_refined_unjustified,
        "refined_physics": phys,
        "fit": {"qmin": pred.physics.qmin, "qmax": pred.physics.qmax, "rmin_A": pred.physics.rmin,
                "rmax_A": pred.physics.rmax, "qdamp_held": pred.physics.qdamp, "from": pred.physics.source,
                # the same for scripts: option, header, band_edge (read off the data), fitted, default
                "q_origin": pred.physics.origin,
                "points": int(len(pred.r)), "q_grid_biso": round(float(pred.q_grid_biso), 4),
                # what of Rwp the data's noise explains (0 where none is seen above Qmax) and
                # what it leaves: searches judge gains on the latter
                "noise_rwp": round(float(pred.noise_rwp), 5),
                "rwp_beyond_noise": round(beyond_noise(best.rwp, pred.noise_rwp), 5),
                # the largest peak below the metal's shortest distance the answer leaves (verdict.short_peak)
                "short_peak": pred.short_peak},
        "first_shell_A": round(pred.d_nn, 4),
        "particle": pred.extent, "input_check": {k: round(float(x), 5) for k, x in pred.input_check.items()},
        # sanity numbers for the reader: metals have no pair far below the first shell, and
        # no atom without a neighbour (atoms beyond the PDF's r range are invisible to Rwp)
        "min_pair_distance_A": round(best.min_pair, 4) if best.n_atoms > 1 else None,
        "detached_atoms": best.detached,
        "model": {"hash": model.hash, "dir": str(model.model_dir), "backend": model.backend,
                  "precision": model.precision, "graph_precisions": model.precisions,
                  "providers": model.providers.get("unet"),
                  "library": (model.manifest.get("library") or {}).get("sha256")},
        "sampler": pred.sampler,
        "timings": {k: round(val, 4) for k, val in timings.items()},
        # rwp of the answers the verdict names (the answer, its runner-up, one set aside) from the
        # DiffPy-exact calculator; of the others, from the fit's binned model (~0.01 apart), which
        # ranked them. A candidate set aside is listed last, not ranked, with the reason; a library
        # entry the search did not propose says what fitted it (``via``: the walk along its
        # family, or the size bound of an exact fit); ``recut``: the searches cut it both ways
        "candidates": [{"rank": i + 1, "source": c.source, "label": c.label, "n_atoms": c.n_atoms,
                        "rwp": c.rwp, "rwp_before_refinement": c.rwp_rigid,
                        "rwp_calculator": "exact" if c.exact else "envelope" if c.envelope else "binned",
                        **({"envelope_diameter_A": round(c.envelope, 2)} if c.envelope else {}), "refined": c.refined,
                        "refined_disorder": c.disordered,
                        **(c.fit.params() if c.fit else {}),
                        **({"via": c.via} if c.via else {}),
                        **({"recut": True} if c.recut else {}),
                        **({"set_aside": c.set_aside} if c.set_aside else {})}
                       for i, c in enumerate(pred.candidates)],
    }
    atomic_write(outdir / f"{stem}.json", lambda p: p.write_text(json.dumps(doc, indent=1, default=float)))
    return outs + [f"{stem}.json"], timings["total_s"], doc


def plot_fit(path: Path, r_data: np.ndarray, g_data: np.ndarray, pred: Prediction, title: str) -> None:
    """Left: the file's whole G(r), the fit over the fitted range (outside it shaded), the
    difference. Right: the structure, first-shell bonds drawn, atoms coloured by coordination."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = pred.best
    fig = plt.figure(figsize=(12, 4.6))
    ax = fig.add_axes([0.06, 0.12, 0.56, 0.76])
    ax.plot(r_data, g_data, color="0.15", lw=1.1, label="data")
    import textwrap

    # a search's label is long: wrapped, the legend keeps to the right of the warnings
    ax.plot(pred.r, best.g_calc, color="tab:red", lw=0.9,
            label=textwrap.fill(f"fit ({best.source}: {best.label})", 42, subsequent_indent="  "))
    lo = min(float(g_data.min()), float(best.g_calc.min()))
    off = lo - 0.25 * float(np.abs(g_data).max())
    ax.plot(pred.r, pred.g_obs - best.g_calc + off, color="tab:blue", lw=0.8, label="difference (offset)")
    ax.axhline(off, color="tab:blue", lw=0.4, ls=":")
    for a, b in ((r_data[0], pred.physics.rmin), (pred.physics.rmax, r_data[-1])):
        if b > a:
            ax.axvspan(a, b, color="0.9", zorder=0)
    ax.text(0.99, 0.02, f"fitted {pred.physics.rmin:g}-{pred.physics.rmax:g} Å (shaded: not fitted)",
            transform=ax.transAxes, ha="right", fontsize=7, color="0.4")
    ax.set_xlim(r_data[0], r_data[-1])
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å$^{-2}$)")
    ax.set_title(title, fontsize=9.5)
    ax.legend(frameon=False, fontsize=7.5, loc="upper right")
    if pred.verdict.warnings:
        text = "\n".join(textwrap.fill(w, 62) for w in pred.verdict.warnings[:3])
        # over the data where the warnings are long: a backing keeps them legible
        ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", fontsize=6.5, zorder=5,
                color="tab:red" if pred.verdict.verdict != "ok" else "0.3",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})
    ax3 = fig.add_axes([0.63, 0.06, 0.30, 0.86], projection="3d")
    c = best.xyz - best.xyz.mean(0)
    nb, _ = bonds(c)
    cn = np.array([len(s) for s in nb])
    if len(c) <= 1200:   # bonds of bigger particles only hide the atoms
        from mpl_toolkits.mplot3d.art3d import Line3DCollection

        segs = [(c[i], c[j]) for i, s in enumerate(nb) for j in s if j > i]
        ax3.add_collection3d(Line3DCollection(segs, colors="0.6", linewidths=0.5))
    size = max(6.0, 60.0 * (40.0 / max(len(c), 40)) ** 0.5)
    sc = ax3.scatter(c[:, 0], c[:, 1], c[:, 2], s=size, c=cn, cmap="viridis", vmin=0, vmax=12,
                     edgecolors="k", linewidths=0.3, depthshade=True)
    lim = np.abs(c).max() + 1.0
    for setter in (ax3.set_xlim, ax3.set_ylim, ax3.set_zlim):
        setter(-lim, lim)
    ax3.set_box_aspect((1, 1, 1))
    ax3.set_axis_off()
    cb = fig.colorbar(sc, cax=fig.add_axes([0.945, 0.25, 0.012, 0.5]))
    cb.set_label("coordination", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_error(outdir: Path, path: Path, message: str) -> Path:
    """An error report beside the results: ``<stem>.error.txt`` (next free name)."""
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / f"{free_stem(outdir, Path(path).stem, ('.error.txt',))}.error.txt"
    atomic_write(target, lambda p: p.write_text(shown(message).rstrip() + "\n", encoding="utf-8"))
    return target
