"""Trained run -> four ONNX graphs (+ fp16 variants, + TensorRT engines) and a manifest.

Graphs (all with a dynamic batch axis):
    condition.onnx  pdf (B,6,500) f32                       -> cond (B,2,125)
    prior.onnx      pdf (B,6,500) f32                       -> mu, logvar (B,1,16,16)
    unet.onnx       x (B,1,16,16) f32, t (B,) i64, cond     -> eps (B,1,16,16)
    decoder.onnx    z (B,1,16,16) f32                       -> kernel (B,4,128,128)
fp16 graphs (``*.fp16.onnx``) keep fp32 inputs/outputs and fp32 islands where numbers are
fragile: normalisations, softmax, reductions, exponentials. Every graph is compared with
PyTorch on real inputs (PDFs simulated from held-out clusters) and the figures go into the
manifest; a graph outside tolerance is an export error.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cbldm.runtime.fileutil import sha256_file
from cbldm.runtime.preprocess import constants, model_input
from cbldm.runtime.sampling import SamplerConfig, Schedule
from cbldm.training.models import (CbLDM, ConditionGraph, DecoderGraph, PriorGraph,
                                   UNetGraph)
from cbldm.training.runs import RunBundle, RunError, default_sampler, load_run as _load_run

MANIFEST_FORMAT = "cbldm-model/1"
FP32_RTOL = 1e-4
# fp16 carries an 11-bit mantissa (4.9e-4 relative per rounding); through ~20 layers the
# errors add up to ~1e-3..1e-2 of the output range. 2e-2 leaves headroom and still
# catches a real defect (overflow, a wrong island), which shows up as O(1).
FP16_RTOL = 2e-2
FP16_BLOCK = ["GroupNormalization", "InstanceNormalization", "LayerNormalization", "Softmax",
              "ReduceMean", "ReduceSum", "ReduceMax", "Exp", "Log", "Pow", "Sqrt", "Div",
              "Sigmoid", "Cos", "Sin", "Range", "CumSum", "Resize"]

GRAPHS = {
    "condition": {"inputs": {"pdf": ["batch", 6, 500]}, "outputs": {"cond": ["batch", 2, 125]}},
    "prior": {"inputs": {"pdf": ["batch", 6, 500]},
              "outputs": {"mu": ["batch", 1, 16, 16], "logvar": ["batch", 1, 16, 16]}},
    "unet": {"inputs": {"x": ["batch", 1, 16, 16], "t": ["batch"], "cond": ["batch", 2, 125]},
             "outputs": {"eps": ["batch", 1, 16, 16]}},
    "decoder": {"inputs": {"z": ["batch", 1, 16, 16]}, "outputs": {"kernel": ["batch", 4, 128, 128]}},
}


class ExportError(RuntimeError):
    pass


def load_run(run: Path) -> RunBundle:
    try:
        return _load_run(run)
    except RunError as exc:
        raise ExportError(str(exc)) from None


def example_pdfs(n: int = 8, seed: int = 0) -> np.ndarray:
    """Real inputs: PDFs (6, 500) of clusters of every type simulated with the training physics."""
    from cbldm.runtime.pdf import DebyePDF
    from cbldm.training.clusters import TYPES, unit_shapes

    rng = np.random.default_rng(seed)
    calc = DebyePDF()
    out = []
    for i in range(n):
        shapes = unit_shapes(TYPES[i % len(TYPES)])
        s = shapes[int(rng.integers(len(shapes)))]
        out.append(model_input(calc.calc(s.xyz_unit * float(rng.uniform(2.3, 3.2)), "Au"))[0])
    return np.stack(out).astype(np.float32)


def _modules(model: CbLDM) -> dict[str, torch.nn.Module]:
    return {"condition": ConditionGraph(model).eval(), "prior": PriorGraph(model).eval(),
            "unet": UNetGraph(model).eval(), "decoder": DecoderGraph(model).eval()}


def _inputs(model: CbLDM, pdf: np.ndarray, seed: int = 0) -> dict[str, tuple]:
    """Inputs for each graph from real PDFs, in the order the graphs take them."""
    g = torch.Generator().manual_seed(seed)
    pdf_t = torch.from_numpy(pdf)
    with torch.no_grad():
        cond = ConditionGraph(model)(pdf_t)
        mu, logvar = PriorGraph(model)(pdf_t)
    b = len(pdf)
    x = torch.randn(b, 1, 16, 16, generator=g)
    t = torch.linspace(0, 999, b).round().long()
    z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()
    return {"condition": (pdf_t,), "prior": (pdf_t,), "unet": (x, t, cond), "decoder": (z,)}


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, spec: dict, exporter: str) -> None:
    names_in, names_out = list(spec["inputs"]), list(spec["outputs"])
    if exporter == "torchscript":
        axes = {n: {0: "batch"} for n in names_in + names_out}
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=18, dynamo=False)
    elif exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple({0: batch} for _ in names_in)
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_shapes=shapes, dynamo=True, external_data=False)
    else:
        raise ExportError(f"unknown exporter {exporter!r} (dynamo, torchscript)")
    import onnx

    onnx.checker.check_model(str(path))


def _constants_to_initializers(model) -> None:
    """onnxconverter-common converts initializers but not Constant nodes, which then feed
    fp16 ops as fp32 (a type error at load). Hoisting float constants fixes that."""
    import onnx

    graph = model.graph
    consumers: dict[str, set] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.op_type)
    arithmetic = {"Mul", "Add", "Sub", "Div", "Max", "Min", "Where"}
    keep = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        # only operands of arithmetic: e.g. Resize's scales must stay fp32
        if node.op_type == "Constant" and value is not None and value.t.data_type == onnx.TensorProto.FLOAT \
                and consumers.get(node.output[0], set()) <= arithmetic:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    # Identity nodes that merely alias an initializer (the TorchScript exporter writes them
    # for shared weights) get mistyped the same way: give each alias its own initializer
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in keep:
        if node.op_type == "Identity" and node.input[0] in inits:
            alias = onnx.TensorProto()
            alias.CopyFrom(inits[node.input[0]])
            alias.name = node.output[0]
            graph.initializer.append(alias)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _timestep_nodes(model, t_input: str = "t") -> list[str]:
    """Nodes from the integer timestep input up to the sin/cos embedding's Concat.

    They stay fp32: fp16 cannot resolve arguments of sin/cos near 999 rad (its step there
    is 0.5), and a converted Cast(to=float) is mistyped by the converter. (Putting Cast in
    the op block list instead makes onnxconverter-common loop forever.)"""
    graph = model.graph
    if t_input not in {i.name for i in graph.input}:
        return []
    live, names = {t_input}, []
    for node in graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if any(i in live for i in node.input):
            names.append(node.name)
            if node.op_type == "Concat":
                continue  # the embedding ends here; what follows may run in fp16
            live.update(node.output)
    return names


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    _constants_to_initializers(model)
    # the converter's final clean-up of back-to-back Casts crashes on nodes that fan out
    # (onnxconverter-common 1.16: 'list' object has no attribute 'input'); skipping it
    # only leaves a few redundant Casts in the graph
    float16.remove_unnecessary_cast_node = lambda graph: None
    # Cast(to=float) nodes are mistyped by the converter; blocked by name they stay fp32
    # (blocking the op type instead makes the converter loop on the Casts it inserts)
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"
             and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCK,
                                            node_block_list=_timestep_nodes(model) + casts)
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst))


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def parity(path: Path, spec: dict, module: torch.nn.Module, args: tuple) -> dict:
    """Max error of ONNX Runtime against PyTorch, relative to each output's range."""
    sess = _ort_session(path)
    feeds = {n: a.numpy() for n, a in zip(spec["inputs"], args)}
    got = sess.run(list(spec["outputs"]), feeds)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    out = {}
    for name, g, w in zip(spec["outputs"], got, want):
        w = w.numpy()
        scale = float(np.abs(w).max()) or 1.0
        out[name] = {"max_abs": float(np.abs(g - w).max()), "max_rel": float(np.abs(g - w).max() / scale),
                     "finite": bool(np.all(np.isfinite(g)))}
    return out


def export_run(run: Path, out: Path, fp16: bool = False, exporter: str = "dynamo",
               tensorrt: bool = False, batch_sizes: tuple[int, ...] = (1, 8, 32),
               sampler: SamplerConfig | None = None, log=print) -> dict:
    """Write MODELDIR: graphs, manifest.json (with parity figures), config copies."""
    bundle = load_run(run)
    model, cfg = bundle.model, bundle.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pdf = example_pdfs(8)
    inputs = _inputs(model, pdf)
    modules = _modules(model)
    graphs, report = {}, {}
    for name, spec in GRAPHS.items():
        t0 = time.perf_counter()
        path = out / f"{name}.onnx"
        export_onnx(modules[name], inputs[name], path, spec, exporter)
        par = parity(path, spec, modules[name], inputs[name])
        worst = max(v["max_rel"] for v in par.values())
        if worst > FP32_RTOL or not all(v["finite"] for v in par.values()):
            raise ExportError(f"{name}.onnx differs from PyTorch: max relative error {worst:.2e} > {FP32_RTOL}")
        graphs[name] = {"fp32": {"file": path.name, "sha256": sha256_file(path), "parity_vs_torch": par}, **spec}
        report[name] = {"fp32_max_rel": worst, "seconds": round(time.perf_counter() - t0, 1)}
        log(f"{name:9s} fp32  max rel err vs torch {worst:.1e}  ({path.stat().st_size / 1e6:.2f} MB)")
        if fp16:
            hpath = out / f"{name}.fp16.onnx"
            to_fp16(path, hpath)
            par16 = parity(hpath, spec, modules[name], inputs[name])
            worst16 = max(v["max_rel"] for v in par16.values())
            ok = worst16 <= FP16_RTOL and all(v["finite"] for v in par16.values())
            graphs[name]["fp16"] = {"file": hpath.name, "sha256": sha256_file(hpath), "parity_vs_torch": par16,
                                    "within_tolerance": ok}
            report[name]["fp16_max_rel"] = worst16
            if not ok:
                # a graph that fails parity in fp16 ships fp32 only (the runtime falls back)
                hpath.unlink()
                del graphs[name]["fp16"]
            log(f"{name:9s} fp16  max rel err vs torch {worst16:.1e}  "
                + ("ok" if ok else f"> {FP16_RTOL}: kept fp32"))
    engines = {}
    if tensorrt:
        from cbldm.export.tensorrt_build import build_engines

        engines = build_engines(out, graphs, batch_sizes, fp16=fp16, log=log)
    sampler = sampler or default_sampler(Path(run))
    data_hash = cfg.get("data", {}).get("manifest_sha256")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "exporter": exporter,
        "graphs": graphs,
        "tensorrt": engines,
        "preprocessing": constants(),
        "pdf_params": _pdf_params(),
        "schedule": Schedule().as_dict(),
        "sampler": sampler.as_dict(),
        "model": cfg["model"],
        "param_counts": cfg.get("param_counts"),
        "training": cfg["train"],
        "data_manifest_sha256": data_hash,
        "tolerances": {"fp32_rel": FP32_RTOL, "fp16_rel": FP16_RTOL},
        "torch": torch.__version__,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "training_config.json").write_text(json.dumps(cfg, indent=1))
    return {"manifest": manifest, "report": report}


def _pdf_params() -> dict:
    from cbldm.runtime.pdf import DEEPSTRUC_PARAMS

    return DEEPSTRUC_PARAMS.as_dict()


LIBRARY_KINDS = ("recipe", "common", "twinned", "extended")


def install_export(staging: Path, out: Path) -> None:
    """Move a finished export from ``staging`` into ``out``, the manifest last, and remove the
    graphs and engines of an earlier export there that the new manifest does not name (an fp16
    graph of an export with --fp16, exported again without). Other files in ``out`` stay."""
    import os
    import shutil

    staging, out = Path(staging), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = staging / "manifest.json"
    names = {f.name for f in staging.iterdir()}
    for name in sorted(names - {manifest.name}):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        os.replace(staging / name, out / name)
    os.replace(manifest, out / "manifest.json")
    for old in [*out.glob("*.onnx"), *out.glob("*.engine")]:
        if old.name not in names:
            old.unlink()


def attach_library(model_dir: Path, library: Path) -> dict:
    """Copy a cluster library (``cbldm-data library``) into MODELDIR and record it, hashed, in the
    manifest: the runtime searches it beside the networks (``--source``)."""
    import shutil

    from cbldm.runtime.library import Library

    model_dir, library = Path(model_dir), Path(library)
    lib = Library(library)   # refuses a file that is not a library
    target = model_dir / "library.npz"
    if library.resolve() != target.resolve():
        shutil.copyfile(library, target)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["library"] = {"file": target.name, "sha256": sha256_file(target), "entries": len(lib),
                           **{f"{kind}_entries": int(np.sum(lib.kind == kind)) for kind in LIBRARY_KINDS},
                           "largest_atoms": int(lib.n_atoms.max())}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest["library"]
