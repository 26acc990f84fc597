"""Shared benchmark plumbing: one-thread pinning, timing, a table on stdout, JSON on disk."""
from __future__ import annotations

import os

# pin BLAS/OpenMP before numpy loads: "per core" figures must not depend on the machine
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"   # the JSONs' folder, wherever a script is run from


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first paragraph as the description, and
    ``--out`` (default ``results/<name>.json`` beside the scripts)."""
    ap = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    ap.add_argument("--out", default=str(RESULTS / f"{name}.json"), help="JSON output (default: %(default)s)")
    return ap


def machine() -> dict:
    from cbldm.runtime.cli_bench import machine_info

    return {**machine_info(), "threads": os.environ.get("OMP_NUM_THREADS")}


def timeit(fn, repeat: int = 5, min_time: float = 0.2) -> dict:
    """Median and min seconds per call; calls are batched until each sample lasts min_time."""
    fn()  # warm-up (caches, lazy kernels)
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= min_time or n >= 1 << 16:
            break
        n *= 2
    samples = [dt / n]
    for _ in range(repeat - 1):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "calls": n * repeat}


def table(rows: list[dict], cols: list[str], title: str = "") -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ([title] if title else []) + ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
                                          "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_json(path: str | Path, name: str, results: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **results}
    path.write_text(json.dumps(doc, indent=1))
    return path
