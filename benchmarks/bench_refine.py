"""Real-space refinement: what it buys over the size fit alone, and what it costs.

    python benchmarks/bench_refine.py [--out benchmarks/results/refine.json]

Ideal clusters, every coordinate perturbed by Gaussian noise (sigma 0.1 A: the size of the
errors the networks leave), the PDF of the ideal cluster as the data. Per structure and
per method, in one run: Rwp against the data, median atom error against the truth after
Kabsch alignment, and seconds (one core).

Methods: the isotropic size fit the pipeline always runs (``size fit``); refinement of
all coordinates with the calculator's own 1e-3 A bins (``refine, 1e-3 A bins``); the
shipped setting, 4e-3 A bins (``refine, 4e-3 A bins``); and the shipped setting with
twice the iterations (100 is shipped).
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401
import numpy as np

from cbldm.runtime.pdf import DebyePDF, rwp
from cbldm.runtime.pipeline import _fit_size
from cbldm.runtime.refine import PDFRefiner
from cbldm.training.clusters import unit_shapes


def structures() -> dict[str, np.ndarray]:
    nn = 2.77  # Pt
    pick = lambda kind, n: next(s for s in unit_shapes(kind) if s.n_atoms == n).xyz_unit * nn  # noqa: E731
    return {"Ico 13": pick("Icosahedron", 13), "Dec 75": pick("Decahedron", 75),
            "Ico 147": pick("Icosahedron", 147), "HCP 256": pick("HCP", 256)}


def median_error(x: np.ndarray, truth: np.ndarray) -> float:
    p, q = x - x.mean(0), truth - truth.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    return float(np.median(np.linalg.norm(p @ (u @ vt) - q, axis=1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/refine.json")
    ap.add_argument("--sigma", type=float, default=0.1)
    args = ap.parse_args()
    calc = DebyePDF()
    refiners = {1: PDFRefiner(calc, stride=1), 4: PDFRefiner(calc, stride=4)}
    rng = np.random.default_rng(0)
    rows = []
    for name, truth in structures().items():
        truth = truth - truth.mean(0)
        g = calc.calc(truth, "Pt")
        start = truth + rng.normal(0, args.sigma, truth.shape)
        t0 = time.perf_counter()
        g0 = calc.calc(start, "Pt", method="histogram")
        s, r, _ = _fit_size(start, g, calc, "Pt", rwp(g, g0), g0)
        rows.append({"structure": name, "atoms": len(truth), "method": "size fit", "rwp": r,
                     "median_err_A": median_error(start * s, truth), "seconds": time.perf_counter() - t0})
        for label, stride, it in (("refine, 1e-3 A bins", 1, 100), ("refine, 4e-3 A bins (shipped)", 4, 100),
                                  ("refine, 4e-3 A bins, 200 it", 4, 200)):
            res = refiners[stride].refine(start, g, maxiter=it, max_shift=1.0, min_distance=0.9 * 2.77)
            rows.append({"structure": name, "atoms": len(truth), "method": label,
                         "rwp": rwp(g, calc.calc(res.xyz, "Pt", method="histogram")),
                         "median_err_A": median_error(res.xyz, truth), "seconds": res.seconds,
                         "iterations": res.iterations})
    print(_common.table(rows, ["structure", "atoms", "method", "rwp", "median_err_A", "seconds", "iterations"],
                        f"perturbed ideal clusters (sigma {args.sigma} A per coordinate), data = ideal PDF"))
    path = _common.write_json(args.out, "refine", {"sigma_A": args.sigma, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
