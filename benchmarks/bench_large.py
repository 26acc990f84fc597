"""A large particle's PDF on one core: the lattice sphere's envelope model vs the Debye sum of
the same sphere cut from the lattice.

    python benchmarks/bench_large.py [--out benchmarks/results/large.json]

The runtime answers particles beyond the library (thousands of atoms) with a lattice sphere
whose diameter is fitted (``cbldm.runtime.envelope``): every trial diameter is a model PDF.
This times one model PDF against the calculator's histogram Debye sum of the cut sphere, and
says how far apart the two PDFs are (Rwp, scale fitted): gold spheres of 40-70 A, Qmax 22,
Qdamp 0.035, Biso 0.5, r to 60 A.
"""
from __future__ import annotations

import time

import _common  # noqa: F401  (pins threads before numpy)
import numpy as np

from cbldm.runtime.envelope import shells, sphere_cut, sphere_pairs
from cbldm.runtime.fitting import FilePhysics, fit_grid
from cbldm.runtime.pdf import DebyePDF, PDFParams, rwp

BOND, BISO, QDAMP = 2.885, 0.5, 0.035


def main() -> None:
    ap = _common.parser(__doc__, "large")
    ap.add_argument("--diameters", default="40,55,70", help="sphere diameters, A")
    args = ap.parse_args()

    params = PDFParams(rmin=0.0, rmax=60.0, rstep=0.01, qmin=0.8, qmax=22.0, biso=BISO, qdamp=QDAMP)
    calc = DebyePDF(params)
    grid = fit_grid(FilePhysics(0.8, 22.0, 1.5, 60.0))
    rows = []
    for dia in (float(v) for v in args.diameters.split(",")):
        x = sphere_cut("fcc", BOND, dia)

        def debye():
            return calc.calc(x, "Au", method="histogram")

        def envelope():
            r, m = shells("fcc", grid.rmax_pair * 1.05 / BOND)
            d, w, n = sphere_pairs(r * BOND, m, "fcc", BOND, dia)
            return grid.g(grid.moments(d, n, 1.0, w), BISO, 0.0, QDAMP)

        t0 = time.perf_counter()     # once: tens of seconds at 70 A
        g_debye = np.interp(grid.r_fit, calc.r, debye())
        t_debye = time.perf_counter() - t0
        t_env = _common.timeit(envelope, repeat=5)["median_s"]
        rows.append({"diameter_A": dia, "atoms": len(x), "debye_s": t_debye, "envelope_s": t_env,
                     "speedup": t_debye / t_env, "rwp_envelope_vs_debye": rwp(g_debye, envelope())})
    print(_common.table(rows, ["diameter_A", "atoms", "debye_s", "envelope_s", "speedup",
                               "rwp_envelope_vs_debye"], "A large particle's PDF, one core"))
    path = _common.write_json(args.out, "large", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
