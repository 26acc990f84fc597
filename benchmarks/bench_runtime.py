"""Beamline latency: the same as `cbldm-bench` (see cbldm.runtime.cli_bench), kept here with the others.

    python benchmarks/bench_runtime.py [--run runs/edge] [--repeats 10]
"""
from cbldm.runtime.cli_bench import main

if __name__ == "__main__":
    main()
