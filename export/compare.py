"""End-to-end effect of fp16: the same PDFs, seeds and sampler through fp32 and fp16 graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cbldm.runtime.backends import load_model
from cbldm.runtime.pipeline import NO_REFINEMENT, PDFInput, predict_batch
from cbldm.runtime.sampling import SamplerConfig


def held_out_pdfs(run: Path, n: int) -> tuple[np.ndarray, list[str]]:
    cfg = json.loads((Path(run) / "config.json").read_text())
    root = Path(cfg["data"]["root"])
    if (root / "manifest.json").exists():
        from cbldm.training.dataset import load_arrays
        from cbldm.training.evaluate import select

        arr = load_arrays(root, split="test")
        rows = select(arr, max(1, n // 7 + 1))[:n]
        return arr.pdf[rows].astype(np.float64), [e.decode() for e in arr.element[rows]]
    from cbldm.export.onnx_export import example_pdfs  # fall back to freshly simulated clusters

    pdf = example_pdfs(n).reshape(n, -1).astype(np.float64)
    return pdf, ["Au"] * n


def fp16_vs_fp32(model_dir: Path, run: Path, n: int, candidates: int = 2) -> dict:
    gs, els = held_out_pdfs(run, n)
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    sampler = SamplerConfig(**manifest["sampler"])
    out = {"n": len(gs)}
    for prec in ("fp32", "fp16"):
        m = load_model(model_dir, backend="cpu", precision=prec)
        # the networks alone, as decoded: refinement and the library would hide their difference
        preds = predict_batch(m, [PDFInput.on_model_grid(g, e) for g, e in zip(gs, els)], sampler,
                              candidates, seed=0, refine=NO_REFINEMENT, source="model")
        out[f"rwp_{prec}"] = float(np.mean([p.best.rwp for p in preds]))
        out[f"atoms_{prec}"] = [p.best.n_atoms for p in preds]
    out["same_atom_counts"] = float(np.mean(np.array(out["atoms_fp32"]) == np.array(out["atoms_fp16"])))
    manifest["fp16_end_to_end"] = {k: v for k, v in out.items() if not k.startswith("atoms_")}
    (Path(model_dir) / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
