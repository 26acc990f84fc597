"""Beamline latency: the same as `cbldm-bench` (see cbldm.runtime.cli_bench), kept here with the others.

    python benchmarks/bench_runtime.py [--run runs/edge] [--repeats 10] [--out PATH]

Unlike `cbldm-bench`, whose default output is a new file in the current directory, this
writes the tracked benchmarks/results/runtime.json that the README's latency table quotes.
"""
import sys
from pathlib import Path

from cbldm.runtime.cli_bench import main

if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print("(this script's default --out: benchmarks/results/runtime.json, beside it)")
    if not any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:]):
        sys.argv += ["--out", str(Path(__file__).resolve().parent / "results" / "runtime.json")]
    main()
