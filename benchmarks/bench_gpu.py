"""The networks on a GPU: PyTorch eager and ONNX Runtime's CUDA provider, batch 1 to 64.

    python benchmarks/bench_gpu.py --run RUN [--model MODELDIR] [--device cuda] [--out benchmarks/results/gpu.json]

One skip-step prediction's graph calls (condition + prior + 20 U-Net + decoder, the shipped
sampler) for B PDFs at once, host-device copies included: p50/p95 seconds per call and PDFs
per second. Rows: PyTorch eager on ``--device`` (the training run's networks), and ONNX Runtime
CUDA (the exported graphs) when ``onnxruntime-gpu`` and a GPU are there; everything else is
said in one line, not skipped silently. ``--device cpu`` runs the PyTorch rows on the CPU
(what the test suite does). The end-to-end path on a GPU machine is ``cbldm-bench``: it adds
CUDA and TensorRT rows by itself when those backends load.
"""
from __future__ import annotations

import time

import _common  # noqa: F401
import numpy as np


def _graph_calls(nets, pdf: np.ndarray, sync) -> float:
    t0 = time.perf_counter()
    cond = nets.condition(pdf)
    mu, _ = nets.prior(pdf)
    x = mu
    b = len(pdf)
    for t in np.linspace(100, 0, 20).astype(np.int64):
        x = x - 0.01 * nets.unet(x, np.full(b, t), cond)
    nets.decoder(x.astype(np.float32))
    sync()
    return time.perf_counter() - t0


def _time(nets, batches, repeats, sync) -> list[dict]:
    rows = []
    for b in batches:
        pdf = np.random.default_rng(0).random((b, 6, 500)).astype(np.float32)
        for _ in range(3):
            _graph_calls(nets, pdf, sync)
        ts = [_graph_calls(nets, pdf, sync) for _ in range(repeats)]
        p50 = float(np.median(ts))
        rows.append({"batch": b, "p50_s": p50, "p95_s": float(np.percentile(ts, 95)), "pdfs_per_s": b / p50})
    return rows


def main() -> None:
    ap = _common.parser(__doc__, "gpu")
    ap.add_argument("--run", help="training run (PyTorch rows)")
    ap.add_argument("--model", help="exported model (ONNX Runtime CUDA rows)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    rows, notes = [], []
    if args.run:
        import torch

        from cbldm.training.runs import TorchNetworks

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            notes.append("PyTorch: no CUDA device here")
        else:
            nets = TorchNetworks(args.run, args.device)
            sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
            name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
            rows += [{"path": f"PyTorch eager ({name})", **r} for r in _time(nets, batches, args.repeats, sync)]
    if args.model:
        from cbldm.runtime.backends import ModelError, load_model

        try:
            m = load_model(args.model, backend="cuda")
            rows += [{"path": "ONNX Runtime CUDA", **r} for r in _time(m, batches, args.repeats, lambda: None)]
        except ModelError as exc:
            notes.append(f"ONNX Runtime CUDA: {exc}")
    for n in notes:
        print(n)
    if rows:
        print(_common.table(rows, ["path", "batch", "p50_s", "p95_s", "pdfs_per_s"],
                            "networks of one skip-step prediction (1 + 1 + 20 + 1 graph calls) per batch"))
    path = _common.write_json(args.out, "gpu", {"rows": rows, "notes": notes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
