"""Honest evaluation: what the networks, the library and both together get right, and on what.

What "held out" means here:
- ``unseen shapes``: the dataset's test split. The split is by shape (``split_indices``):
  the networks never saw any bond length of these shapes. The library holds every recipe
  shape, so for it these are seen: the library is exact there, by construction.
- ``seen shapes``: the training split (the paper's protocol, Table 2), labelled as such.
- ``out of recipe``: ``cbldm.training.offrecipe``, never trained or tuned on: families neither
  the recipe nor the training pool builds, non-ideal test shapes, other measurement physics,
  particles beyond 256 atoms.

Structure metrics beside Rwp, for every answer (the truth is used only here):
- exact atom count, and the mean |N_pred - N_true|;
- pair-distance error: the mean absolute difference between the quantile functions of the
  answer's and the truth's pair distances (the 1-Wasserstein distance of the two pair-distance
  distributions, A). For equal atom counts it is the mean |difference| of the sorted pair
  distances; for different counts it compares the distributions, so every answer is scored;
- RMSD after optimal assignment (Hungarian matching alternated with Kabsch superposition,
  reflections allowed, several starting orientations), where the atom count is right;
- Rwp after the physics fit (before coordinate refinement) and after refinement.
Each table gives the library alone, the networks alone and both, on the same PDFs; for
"both", the share of answers whose winning candidate came from the networks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cbldm.runtime.pdfio import PDFInputError
from cbldm.runtime.pipeline import NO_REFINEMENT, PDFInput, RefineConfig, predict_batch
from cbldm.runtime.sampling import SamplerConfig
from cbldm.runtime.verdict import InputRefused
from cbldm.training.clusters import SHORT, TYPES

PAPER_TABLE2 = {  # Rwp on 100 *training* structures per type (METHOD.md)
    "CbLDM": {"bcc": 0.410, "dec": 0.026, "fcc": 0.068, "hcp": 0.263, "ico": 0.095, "oct": 0.151,
              "sc": 0.059, "total": 0.380},
    "DeepStruc": {"bcc": 0.793, "dec": 0.692, "fcc": 1.682, "hcp": 1.347, "ico": 1.605, "oct": 1.590,
                  "sc": 1.107, "total": 1.266},
}
ORDER = ["bcc", "dec", "fcc", "hcp", "ico", "oct", "sc"]
OFF_ORDER = ["unseen-family", "perturbed", "physics", "large", "families", "families-physics", "families-large",
             "families-b", "families-b-physics", "families-b-large", "large-beyond"]


@dataclass
class Item:
    name: str
    group: str
    pdf: PDFInput
    truth: np.ndarray
    motif: str = ""


# -- what is evaluated -------------------------------------------------------------------------

def select(arrays, per_type: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(len(TYPES)):
        idx = np.flatnonzero(arrays.type == t)
        if per_type is not None and len(idx) > per_type:
            idx = np.sort(rng.choice(idx, per_type, replace=False))
        rows.extend(idx.tolist())
    return np.array(sorted(rows), dtype=int)


def dataset_items(data_root: Path, split: str, per_type: int | None, seed: int = 0) -> list[Item]:
    from cbldm.training.dataset import load_arrays
    from cbldm.training.offrecipe import MOTIF

    arr = load_arrays(data_root, split=split)
    out = []
    for i in select(arr, per_type, seed):
        n = int(arr.n_atoms[i])
        name = arr.name[i].decode()
        out.append(Item(name, SHORT[TYPES[arr.type[i]]],
                        PDFInput.on_model_grid(arr.pdf[i].astype(np.float64), arr.element[i].decode(), name=name),
                        arr.xyz[i, :n].astype(np.float64), MOTIF[TYPES[arr.type[i]]]))
    return out


def offrecipe_items(root: Path, groups: list[str] | None = None, known_qdamp: bool = False,
                    qmin: float | None = None, qmax: float | None = None) -> list[Item]:
    """The set's PDFs read like measured files; ``known_qdamp`` holds each file's Qdamp at the value
    it was simulated with, as for a user whose instrument is calibrated (the files do not say);
    ``qmin``, ``qmax``: given for every file, as ``cbldm-run --qmin/--qmax``."""
    import ase.io

    from cbldm.runtime.results import read_input
    from cbldm.training.offrecipe import load_index

    root = Path(root)
    out = []
    for it in load_index(root)["items"]:
        if groups and it["group"] not in groups:
            continue
        qd = float(it["physics"]["qdamp"]) if known_qdamp else None
        _, pdf = read_input(root / f"{it['name']}.gr", qdamp=qd, qmin=qmin, qmax=qmax)
        out.append(Item(it["name"], it["group"], pdf, ase.io.read(root / f"{it['name']}.xyz").get_positions(),
                        it["motif"]))
    return out


# -- structure metrics -------------------------------------------------------------------------

def pair_distance_error(pred: np.ndarray, true: np.ndarray) -> float:
    """1-Wasserstein distance between the two pair-distance distributions (A); for equal atom
    counts, the mean |difference| of the sorted pair distances."""
    from scipy.spatial.distance import pdist
    from scipy.stats import wasserstein_distance

    if len(pred) < 2 or len(true) < 2:
        return float("nan")
    if max(len(pred), len(true)) > PAIRS_LISTED:
        # a 10,000-atom answer has 5e7 pairs: compared as histograms of 1e-3 A bins (W1 to 1e-3 A)
        a, b = _pair_cdf(pred), _pair_cdf(true)
        m = max(len(a), len(b))
        a, b = np.pad(a, (0, m - len(a)), constant_values=1.0), np.pad(b, (0, m - len(b)), constant_values=1.0)
        return float(np.abs(a - b).sum() * PAIR_BIN)
    return float(wasserstein_distance(pdist(pred), pdist(true)))


PAIRS_LISTED = 3000     # atoms up to which pair distances are listed and compared exactly
PAIR_BIN = 1e-3         # A, beyond


def _pair_cdf(x: np.ndarray) -> np.ndarray:
    """Cumulative distribution of the pair distances of ``x`` on PAIR_BIN bins, 128 rows at a time
    (an 80,000-atom answer: 250 MB per block, no N^2 array)."""
    from cbldm.runtime.library import pair_counts

    c = np.cumsum(pair_counts(x, PAIR_BIN, block=128))
    return c / c[-1]


def assigned_rmsd(pred: np.ndarray, true: np.ndarray, starts: int = 24, iters: int = 6,
                  seed: int = 0) -> float:
    """RMSD (A) after optimal superposition and atom assignment (equal counts only)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.transform import Rotation

    if len(pred) != len(true) or len(pred) < 2:
        return float("nan")
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    rots = Rotation.random(starts - 1, random_state=seed).as_matrix()
    best = np.inf
    for sign in (1.0, -1.0):                      # reflections: the PDF cannot tell enantiomers
        for rot in [np.eye(3), *rots]:
            x = (p * np.array([sign, 1.0, 1.0])) @ rot.T
            for _ in range(iters):
                d = ((x[:, None, :] - t[None]) ** 2).sum(-1)
                rows, cols = linear_sum_assignment(d)
                a, b = x[rows], t[cols]
                u, _, vt = np.linalg.svd(a.T @ b)
                if np.linalg.det(u @ vt) < 0:
                    u[:, -1] *= -1
                x = x @ (u @ vt)
            d = ((x[:, None, :] - t[None]) ** 2).sum(-1)
            rows, cols = linear_sum_assignment(d)
            best = min(best, float(np.sqrt(d[rows, cols].mean())))
    return best


def score(item: Item, pred) -> dict:
    from cbldm.runtime.structure import motif

    b = pred.best
    n_true = len(item.truth)
    exact = b.n_atoms == n_true
    pm = motif(b.unrefined_xyz)["motif"] if b.n_atoms <= 1500 else (b.motif or "")
    return {"name": item.name, "group": item.group, "n_atoms_true": n_true, "n_atoms_pred": b.n_atoms,
            "exact_count": bool(exact), "count_error": abs(b.n_atoms - n_true),
            "pair_distance_error_A": pair_distance_error(b.xyz, item.truth) if n_true <= 1500 else float("nan"),
            "rmsd_A": assigned_rmsd(b.xyz, item.truth, starts=8) if exact and n_true <= 300 else float("nan"),
            "rwp": b.rwp, "rwp_before_refinement": b.rwp_rigid, "refined": b.refined,
            "refined_disorder": b.disordered, "answer_source": b.source, "answer_label": b.label, "verdict": pred.verdict.verdict,
            "warnings": pred.verdict.warnings, "short_peak": pred.short_peak,
            "motif_true": item.motif, "motif_pred": pm,
            "size_true_A": _diam(item.truth), "size_pred_A": _diam(b.xyz),
            # each candidate's structure error too: what another ranking would have answered
            "candidates": [{"source": c.source, "n_atoms": c.n_atoms, "rwp": c.rwp, "rwp_rigid": c.rwp_rigid,
                            "refined": c.refined,
                            "pair_distance_error_A": pair_distance_error(c.xyz, item.truth)
                            if max(c.n_atoms, n_true) <= 1500 and c.n_atoms > 1 else float("nan"),
                            **({"set_aside": True} if c.set_aside else {})}
                           for c in pred.candidates]}


def _diam(x: np.ndarray) -> float:
    from cbldm.runtime.structure import diameter

    return round(diameter(x), 2)


def _refused(item: Item, exc: Exception) -> dict:
    return {"name": item.name, "group": item.group, "n_atoms_true": len(item.truth), "n_atoms_pred": 0,
            "exact_count": False, "count_error": len(item.truth), "pair_distance_error_A": float("nan"),
            "rmsd_A": float("nan"), "rwp": 1.0, "rwp_before_refinement": 1.0, "refined": False,
            "answer_source": "refused", "answer_label": str(exc), "verdict": "refused", "warnings": [str(exc)],
            "motif_true": item.motif, "motif_pred": "", "size_true_A": _diam(item.truth), "size_pred_A": 0.0,
            "candidates": []}


# -- running -------------------------------------------------------------------------------------

def run_items(nets, items: list[Item], source: str, library, sampler: SamplerConfig, candidates: int = 4,
              seed: int = 0, refine: RefineConfig = RefineConfig(), batch: int = 8, log=print) -> list[dict]:
    rows, t0 = [], time.perf_counter()
    for lo in range(0, len(items), batch):
        chunk = items[lo:lo + batch]
        try:
            preds = predict_batch(nets, [it.pdf for it in chunk], sampler, candidates, seed + lo,
                                  refine=refine, source=source, library=library)
        except (InputRefused, PDFInputError):   # one refused PDF: run the chunk one by one
            preds = []
            for it in chunk:
                try:
                    preds.append(predict_batch(nets, [it.pdf], sampler, candidates, seed + lo, refine=refine,
                                               source=source, library=library)[0])
                except (InputRefused, PDFInputError) as exc:
                    preds.append(exc)
        for it, p in zip(chunk, preds):
            rows.append(_refused(it, p) if isinstance(p, Exception) else score(it, p))
        log(f"  {source}: {len(rows)}/{len(items)} PDFs, {time.perf_counter() - t0:.0f} s")
    return rows


def summarise(rows: list[dict], groups: list[str]) -> dict:
    table = {}
    for g in groups + ["total"]:
        rs = [r for r in rows if g == "total" or r["group"] == g]
        if not rs:
            continue

        def mean(key, sel=None):
            v = [r[key] for r in rs if (sel is None or sel(r)) and np.isfinite(r[key])]
            return float(np.mean(v)) if v else float("nan")

        rm = [r["rmsd_A"] for r in rs if np.isfinite(r["rmsd_A"])]
        # each mean says over how many answers it runs (pair distances: up to 1500 atoms;
        # RMSD: right counts up to 300 atoms; refused PDFs count as wrong, Rwp 1)
        table[g] = {"n": len(rs), "n_pair_distance": sum(np.isfinite(r["pair_distance_error_A"]) for r in rs),
                    "n_large": sum(r["n_atoms_true"] > 1500 for r in rs),
                    "n_rmsd": len(rm), "exact_count": float(np.mean([r["exact_count"] for r in rs])),
                    "count_error": mean("count_error"),
                    # for particles too large for an exact count to mean much (or pair distances to
                    # be compared): how close the count and the diameter come
                    "count_within_10pct": float(np.mean([r["count_error"] <= 0.1 * r["n_atoms_true"] for r in rs])),
                    "size_error_rel_median": float(np.median([abs(r["size_pred_A"] - r["size_true_A"])
                                                              / max(r["size_true_A"], 1e-9) for r in rs])),
                    "pair_distance_error_A": mean("pair_distance_error_A"),
                    "pair_distance_error_A_exact": mean("pair_distance_error_A", lambda r: r["exact_count"]),
                    "rmsd_A_median": float(np.median(rm)) if rm else float("nan"),
                    "rwp": mean("rwp"), "rwp_median": float(np.median([r["rwp"] for r in rs])),
                    "rwp_before_refinement": mean("rwp_before_refinement"),
                    "from_model": float(np.mean([r["answer_source"] == "model" for r in rs])),
                    "n_truth_in_library": sum(bool(r.get("truth_in_library")) for r in rs),
                    "verdicts": {v: sum(r["verdict"] == v for r in rs)
                                 for v in ("ok", "doubtful", "unusable", "refused")}}
    return table


def truth_in_library(library, items: list[Item], max_atoms: int = 300) -> set[str]:
    """Names of the items whose true structure is a library entry (same shape at any bond
    length): for those the library's answer is a lookup, and tables must say so."""
    from cbldm.training.variants import shape_key

    small = [it for it in items if len(it.truth) <= max_atoms]
    if not small:
        return set()
    keys = {shape_key(library.xyz(i)) for i in np.flatnonzero(library.n_atoms <= max_atoms)}
    return {it.name for it in small if shape_key(it.truth) in keys}


def evaluate(nets, library, items: list[Item], groups: list[str], what: str,
             sources=("library", "model", "both"), candidates: int = 4,
             sampler: SamplerConfig | None = None, seed: int = 0,
             refine: RefineConfig = RefineConfig(), log=print) -> dict:
    sampler = sampler or SamplerConfig()
    held = truth_in_library(library, items) if library is not None else set()
    from cbldm.runtime import pipeline

    doc = {"what": what, "n": len(items), "candidates": candidates, "sampler": sampler.as_dict(),
           "refine": refine.as_dict(), "truth_in_library": sorted(held), "sources": {},
           # the pipeline's constants: runs with other values must be told apart
           "pipeline": {"library_top": pipeline.LIBRARY_TOP, "library_per_motif": pipeline.LIBRARY_PER_MOTIF,
                        "refine_not_needed": pipeline.REFINE_NOT_NEEDED,
                        "library_entries": None if library is None else len(library)}}
    for src in sources:
        if src in ("model", "both") and nets is None:
            continue
        t0 = time.perf_counter()
        rows = run_items(nets, items, src, library, sampler, candidates, seed, refine, log=log)
        for r in rows:
            r["truth_in_library"] = r["name"] in held
        doc["sources"][src] = {"seconds": time.perf_counter() - t0, "table": summarise(rows, groups),
                               "results": rows}
    return doc


def table_markdown(doc: dict, groups: list[str]) -> str:
    srcs = list(doc["sources"])
    # sets with particles beyond 1500 atoms (no pair-distance error there) also say how close
    # the count and the diameter come
    large = any(t.get("n_large", 0) for t in doc["sources"][srcs[0]]["table"].values())
    per = ("exact N", "pair-dist. err Å", "Rwp") + (("N within 10 %", "diameter err") if large else ())
    head = ["group", "n"] + [f"{s}: {m}" for s in srcs for m in per]
    if "both" in srcs:
        head.append("both: from networks")
    # how far an "ok" verdict can be trusted: of the answers it was given to, how many have
    # the exact atom count (the answering source: both, where it ran)
    judged = "both" if "both" in srcs else srcs[-1]
    rows = doc["sources"][judged].get("results")
    if rows is not None:
        head.append(f"{judged}: 'ok' exact / given")
    head.append("truth in library")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups + ["total"]:
        first = doc["sources"][srcs[0]]["table"].get(g)
        if first is None:
            continue
        cells = [g, str(first["n"])]
        for s in srcs:
            r = doc["sources"][s]["table"][g]
            cells += [f"{100 * r['exact_count']:.0f} %", f"{r['pair_distance_error_A']:.3f}",
                      f"{r['rwp']:.3f} ({r['rwp_before_refinement']:.3f})"]
            if large:   # "-" for a column kept from a run before these were measured
                cells += [f"{100 * r[k]:.0f} %" if k in r else "-" for k in ("count_within_10pct", "size_error_rel_median")]
        if "both" in srcs:
            cells.append(f"{100 * doc['sources']['both']['table'][g]['from_model']:.0f} %")
        if rows is not None:
            ok = [r for r in rows if (g == "total" or r["group"] == g) and r["verdict"] == "ok"]
            cells.append(f"{sum(bool(r['exact_count']) for r in ok)} / {len(ok)}")
        cells.append(str(first.get("n_truth_in_library", "?")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- ranking criteria --------------------------------------------------------------------------

def criteria(rows_restrained: list[dict], rows_free: list[dict]) -> dict:
    """Which candidate each criterion would pick, and how often its atom count is right:
    the rigid physics fit (no coordinates), restrained refinement, free refinement. Both runs
    score the same candidates (same seeds)."""
    out = {}
    for name, rows, key in (("rigid physics fit", rows_restrained, "rwp_rigid"),
                            ("restrained refinement", rows_restrained, "rwp"),
                            ("free refinement", rows_free, "rwp")):
        hits = []
        for r in rows:
            if not r["candidates"]:
                continue
            pick = min((c for c in r["candidates"] if not c.get("set_aside")), key=lambda c: c[key])
            hits.append(pick["n_atoms"] == r["n_atoms_true"])
        out[name] = {"exact_count": float(np.mean(hits)) if hits else float("nan"), "n": len(hits)}
    return out


# -- the sampler sweep ----------------------------------------------------------------------------

SWEEP = [
    SamplerConfig(t1=None),                                             # prior only
    SamplerConfig(t1=999, t2=999, steps_before=0, steps_after=25),      # plain LDM, DDIM 25
    SamplerConfig(t1=900, t2=800, steps_before=10, steps_after=20),     # the paper's skip
    SamplerConfig(t1=999, t2=300, steps_before=0, steps_after=20),      # prior sample noised to 300
    SamplerConfig(t1=999, t2=100, steps_before=0, steps_after=20),      # prior sample noised to 100
    SamplerConfig(t1=999, t2=999, steps_before=0, steps_after=1000, kind="ddpm"),  # the full sampler
]


def sweep(nets, items: list[Item], candidates: int = 2, configs=SWEEP, clip: float | None = None,
          log=print, refine: RefineConfig = NO_REFINEMENT) -> dict:
    """Networks alone (``--source model``) under each sampler, on validation shapes."""
    rows = []
    for cfg in configs:
        cfg = replace(cfg, clip=clip)
        t0 = time.perf_counter()
        res = run_items(nets, items, "model", None, cfg, candidates, refine=refine, log=lambda m: None)
        tot = summarise(res, [])["total"]
        calls = 1000 if cfg.kind == "ddpm" else cfg.unet_calls()
        rows.append({"sampler": cfg.as_dict(), "unet_calls": calls, "rwp": tot["rwp"],
                     "exact_count": tot["exact_count"], "pair_distance_error_A": tot["pair_distance_error_A"],
                     "seconds": time.perf_counter() - t0})
        log(f"t1={cfg.t1} t2={cfg.t2} calls={calls:4d} ({cfg.kind}): Rwp {tot['rwp']:.4f}, exact counts "
            f"{100 * tot['exact_count']:.0f} %, pair-distance error {tot['pair_distance_error_A']:.3f} A")
    best = max(r["exact_count"] for r in rows)
    # ship the cheapest setting within 5 points of the best exact-count rate
    ok = [r for r in rows if r["exact_count"] >= best - 0.05]
    chosen = min(ok, key=lambda r: (r["unet_calls"], r["rwp"]))
    full = [r for r in rows if r["sampler"]["kind"] == "ddpm"]
    return {"n": len(items), "candidates": candidates, "rows": rows, "chosen": chosen,
            "full_sampler": full[0] if full else None}


def dump(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float))
