"""What ``cbldm-run info`` says about a loaded model: the data, and the lines a person reads."""
from __future__ import annotations

import json

from cbldm.runtime.backends import LoadedModel


# the test sets of MODEL/evaluation.json (``cbldm-eval summary``), in the order shown
EVALUATIONS = {"unseen": "unseen shapes", "offrecipe": "out of recipe", "offrecipe_2": "out of recipe, second draw",
               "families": "held-out families (a)", "families_b": "held-out families (b)"}


def model_info(m: LoadedModel) -> dict:
    """Everything ``cbldm-run info`` reports, as plain data (its ``--json``)."""
    man = m.manifest
    ev, totals = m.model_dir / "evaluation.json", None
    if ev.exists():
        try:  # cbldm-eval's tables: per test set, per source, the totals
            doc = json.loads(ev.read_text())
            totals = {s: {src: t["total"] for src, t in doc[s]["sources"].items()}
                      for s in EVALUATIONS if s in doc}
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
            totals = None
    lib = man.get("library") or {}
    return {"hash": m.hash, "dir": str(m.model_dir), "created": man.get("created"),
            "exporter": man.get("exporter"), "torch": man.get("torch"),
            "backend": m.backend, "providers": m.providers, "backends_unavailable": m.skipped,
            "precision": m.precision, "precisions": m.precisions,
            "preset": man.get("model", {}).get("preset"), "param_counts": man.get("param_counts"),
            "sampler": man.get("sampler"), "schedule": man.get("schedule"), "pdf_params": man.get("pdf_params"),
            "data_manifest_sha256": man.get("data_manifest_sha256"), "library": lib or None,
            "evaluation": totals}


def info_lines(doc: dict) -> list[tuple[str, str]]:
    """``model_info`` as (label, text) rows for a person: no dicts, no JSON."""
    def g(v) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    provs = {", ".join(p) for p in doc["providers"].values()}
    lines = [("model", f"{doc['hash']} ({doc['dir']})"),
             ("made", f"{doc['created']}, exporter {doc['exporter']}, torch {doc['torch']}"),
             ("backend", f"{doc['backend']} ({'; '.join(sorted(provs))})")]
    lines += [("", f"{b} unavailable: {why}") for b, why in doc["backends_unavailable"].items()]
    if len(set(doc["precisions"].values())) > 1:
        lines.append(("precision", ", ".join(f"{n} {p}" for n, p in doc["precisions"].items())))
    else:
        lines.append(("precision", f"{doc['precision']} (every graph)"))
    counts = doc["param_counts"] or {}
    if counts:
        lines.append(("networks", f"{doc['preset']} preset, {sum(counts.values()) / 1e6:.2f} M parameters ("
                      + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()) + ")"))
    sp = doc["sampler"] or {}
    if sp.get("t1") is None:
        sampler = "prior only, no U-Net calls"
    else:
        sampler = (f"skip-step {sp.get('kind', 'ddim').upper()}: t1 {sp['t1']}, t2 {sp.get('t2')}, "
                   f"{sp.get('steps_before')} + {sp.get('steps_after')} U-Net calls")
    if sp.get("clip") is not None:
        sampler += f", x0 clipped to +-{g(sp['clip'])}"
    lines.append(("sampler", sampler))
    sc = doc["schedule"] or {}
    lines.append(("schedule", f"{sc.get('kind')}, T {sc.get('T')}, s {g(sc.get('s'))}"))
    p = doc["pdf_params"] or {}
    lines.append(("PDF", f"Qmin {g(p.get('qmin'))}, Qmax {g(p.get('qmax'))} 1/A, Biso {g(p.get('biso'))} A^2, "
                         f"Qdamp {g(p.get('qdamp'))}, delta1 {g(p.get('delta1'))}, delta2 {g(p.get('delta2'))}, "
                         f"r {g(p.get('rmin'))}-{g(p.get('rmax'))} A step {g(p.get('rstep'))}"))
    lines.append(("data", f"training set manifest sha256 {doc['data_manifest_sha256']}"))
    lib = doc.get("library")
    if lib:
        common = f", {lib['common_entries']} common shapes" if lib.get("common_entries") else ""
        common += f", {lib['twinned_entries']} twinned spheres" if lib.get("twinned_entries") else ""
        # manifests before 2026-11-29 did not count the extended part: the rest of the entries
        rest = lib.get("extended_entries", lib["entries"] - sum(
            lib.get(f"{k}_entries", 0) for k in ("recipe", "common", "twinned")))
        common += f", {rest} larger members of their families" if rest else ""
        lines.append(("library", f"{lib['entries']} clusters ({lib['recipe_entries']} recipe shapes{common}, up to "
                                 f"{lib['largest_atoms']} atoms), sha256 {lib['sha256'][:16]}"))
    for key, by_source in (doc.get("evaluation") or {}).items():
        cells = [f"{src} {100 * t['exact_count']:.0f} % exact, pair err {t['pair_distance_error_A']:.2f} A, "
                 f"Rwp {t['rwp']:.3f}" for src, t in by_source.items()]
        label = "held-out" if key == "unseen" else ""
        lines.append((label, f"{EVALUATIONS[key]} ({next(iter(by_source.values()))['n']} PDFs): " + "; ".join(cells)))
    return lines
