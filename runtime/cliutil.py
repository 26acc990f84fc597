"""Shared CLI plumbing: exit codes and one-line error reporting (no tracebacks for users)."""
from __future__ import annotations

import os
import sys

# One OpenBLAS thread, set before numpy loads (every CLI imports this module first). numpy
# and scipy each bundle their own OpenBLAS; with two threads each on a 2-core machine the
# two pools spin against each other inside scipy's L-BFGS-B: recovery took 0.81 s instead
# of 0.28 s and refinement 4.7 s instead of 1.35 s for the example PDF. The matrices here
# are small; ONNX Runtime and torch keep their own thread pools. An explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_INPUT) -> "typer.Exit":
    """Print ``error: <message>`` on stderr as one line and return the Exit to raise."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return typer.Exit(code)


def refine_config(top: int, maxiter: int):
    """``--refine N --refine-iter I`` as a RefineConfig; a bad value is a usage error."""
    from cbldm.runtime.pipeline import RefineConfig

    try:
        return RefineConfig(top=top, maxiter=maxiter)
    except ValueError:
        raise fail("--refine must be >= 0 and --refine-iter >= 1", EXIT_USAGE) from None


def run_app(app: typer.Typer) -> None:
    """Run a Typer app; anything unexpected becomes one line on stderr and exit code 1."""
    try:
        # outside standalone mode click returns a typer.Exit's code instead of raising it
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else EXIT_OK)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (typer vendors click) know how to show themselves, exit 2
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(EXIT_INPUT)
