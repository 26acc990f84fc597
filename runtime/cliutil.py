"""Shared CLI plumbing: exit codes and one-line error reporting (no tracebacks for users).

Exit codes, every command: 0 ok; 1 the work could not be done (a bad input file, a
model that cannot be used, a missing optional extra); 2 usage (an option value no
input could make right, a missing argument).
"""
from __future__ import annotations

import importlib.util
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


# The modules behind each optional extra of pyproject.toml (tests/test_cli.py keeps them equal).
EXTRAS = {
    "data": ("h5py",),
    "train": ("torch", "h5py", "safetensors"),
    "export": ("torch", "onnx", "onnxscript", "onnxconverter_common", "safetensors", "h5py"),
}


def require_extra(command: str, extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Exit 1 with one line unless the modules of ``extra`` import. Call it before any work
    or output: without it, ``cbldm-data generate`` enumerated clusters for 11 s, then died
    on ``import h5py`` inside a worker and left a half-made dataset directory behind."""
    # find_spec, not import: importing torch alone takes seconds, and the command imports
    # it anyway; a module that is there but broken still fails there, in one line (run_app)
    missing = []
    for name in modules or EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise fail(f"{command} needs the '{extra}' extra ({', '.join(missing)} not importable): "
                   f'pip install "cbldm[{extra}]"')


def refine_workers(threads: int | None) -> int:
    """Candidates refined side by side: ``--threads``, else the cores this process may use, at
    most 4 (the default refines 4 candidates)."""
    if threads is not None:
        return max(1, threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def refine_config(top: int, maxiter: int, rank: str = "criterion", disorder: bool = True, search: int = 1,
                  envelope: bool = True, threads: int | None = None):
    """``--refine N --refine-iter I [--rank R] [--no-disorder]`` as a RefineConfig; a bad value is
    a usage error. ``threads``: ``refine_workers``."""
    from cbldm.runtime.pipeline import RefineConfig

    # each option by its own name: cbldm-run has --refine and --refine-iter, cbldm-eval more
    for bad, message in ((top < 0, "--refine must be >= 0"), (maxiter < 1, "--refine-iter must be >= 1"),
                         (search < 0, "--search must be >= 0"),
                         (rank not in ("criterion", "rwp"), f"--rank {rank!r}: choose criterion or rwp")):
        if bad:
            raise fail(message, EXIT_USAGE)
    # 0 is "the structure as found": no coordinate refinement, no strain, no walk along the
    # library family, no atom or layer search and no second fit above a peak of another
    # element (the verdict still names it)
    return RefineConfig(top=top, maxiter=maxiter, rank=rank, search=search if top > 0 else 0, strain=top > 0,
                        walk=top > 0, disorder=disorder, envelope=envelope and top > 0, above_short=top > 0,
                        workers=refine_workers(threads))


def readable_help(cmd) -> None:
    """Help that reads as a manual: arguments by their metavar (``FILE...``, not typer's
    ``{files}...`` with a ``<list[Path]>`` type column) and repeatable options typed by
    their element (``<path>``, not ``<list[Path]>``). Works on the click command tree of a
    Typer app, whatever typer version made it; a typer without these hooks is left as is."""
    import inspect
    import re

    for sub in getattr(cmd, "commands", {}).values():
        readable_help(sub)
    if getattr(cmd, "help", None):
        # a docstring's line breaks survive into rich's wrapping at the terminal's width, each
        # line cut again where it ends: paragraphs are joined, the blank lines between kept
        paras = re.split(r"\n\s*\n", inspect.cleandoc(cmd.help))
        cmd.help = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paras)
    for p in getattr(cmd, "params", []):
        if getattr(p, "param_type_name", "") == "argument":
            name = (p.metavar or p.name or "ARG").upper().rstrip(".")
            shown = name + ("..." if p.nargs != 1 else "")
            p.metavar = shown
            p.get_usage_pieces = lambda ctx, s=shown, req=p.required: [s if req else f"[{s}]"]
            p.display_type_rich = lambda ctx: None
        elif p.name == "help":  # a flag everybody knows; "<bool>" beside it is noise
            p.display_type_rich = lambda ctx: None
        elif getattr(p, "multiple", False) and p.metavar is None and hasattr(p, "display_type_rich"):
            def element_type(ctx, orig=p.display_type_rich):
                label = orig(ctx)
                m = re.fullmatch(r"<list\[(\w+)\]>", label or "")
                return f"<{m.group(1).lower()}>" if m else label
            p.display_type_rich = element_type


def run_app(app: typer.Typer) -> None:
    """Run a Typer app; anything unexpected becomes one line on stderr and exit code 1."""
    try:
        cmd = typer.main.get_command(app)
        readable_help(cmd)
        # outside standalone mode click returns a typer.Exit's code instead of raising it
        rc = cmd(standalone_mode=False)
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
