"""PDFs per second for 256-atom particles on one core: exact Debye sum vs histogram kernel.

    python benchmarks/bench_pdf.py [--out benchmarks/results/pdf.json]

Ideal clusters repeat distances (the exact path sums distinct ones); predicted structures
do not, so a 256-atom cluster with 0.05 A random displacements is timed too. Accuracy is
Rwp against the exact result. diffpy.srreal is timed when it imports.
"""
from __future__ import annotations

import _common  # noqa: F401  (pins threads before numpy)
import numpy as np

from cbldm.runtime.pdf import DebyePDF, calculate_pdf_diffpy, diffpy_available, rwp
from cbldm.training.clusters import unit_shapes


def main() -> None:
    ap = _common.parser(__doc__, "pdf")
    args = ap.parse_args()

    hcp = [s for s in unit_shapes("HCP") if s.n_atoms == 256][0].xyz_unit * 2.88
    rng = np.random.default_rng(0)
    cases = {"ideal HCP 256": hcp, "perturbed HCP 256 (0.05 A)": hcp + rng.normal(0, 0.05, hcp.shape)}
    calc = DebyePDF()
    rows = []
    for case, xyz in cases.items():
        exact = calc.calc(xyz, "Au")
        methods = {"exact": lambda: calc.calc(xyz, "Au", method="exact"),
                   "histogram": lambda: calc.calc(xyz, "Au", method="histogram")}
        if diffpy_available():
            methods["diffpy.srreal"] = lambda: calculate_pdf_diffpy(xyz, "Au")
        base = None
        for name, fn in methods.items():
            t = _common.timeit(fn, repeat=5)
            base = base or t["median_s"]
            rows.append({"structure": case, "method": name, "ms_per_pdf": 1e3 * t["median_s"],
                         "pdfs_per_s": 1.0 / t["median_s"], "speedup_vs_exact": base / t["median_s"],
                         "rwp_vs_exact": rwp(exact, fn(), fit_scale=False)})
    print(_common.table(rows, ["structure", "method", "ms_per_pdf", "pdfs_per_s", "speedup_vs_exact",
                               "rwp_vs_exact"], "PDF of a 256-atom particle, one core"))
    path = _common.write_json(args.out, "pdf", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
