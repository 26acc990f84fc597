"""Load an exported model directory and run its four graphs on the best available backend.

Backends: ``tensorrt`` (engines ``*.plan``; needs tensorrt + cuda-python + a GPU),
``cuda`` (ONNX Runtime CUDAExecutionProvider), ``cpu`` (ONNX Runtime CPU). ``auto`` tries
them in that order. ONNX Runtime silently falls back to the CPU when the CUDA libraries
are missing, so the providers a session really got are checked and reported.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbldm.runtime.fileutil import read_json, sha256_file
from cbldm.runtime.preprocess import constants

GRAPH_NAMES = ("condition", "prior", "unet", "decoder")
FORMAT = "cbldm-model/1"


class ModelError(RuntimeError):
    """A model directory that cannot be used; the message is one line."""


def load_manifest(model_dir: Path, verify: bool = True) -> dict:
    model_dir = Path(model_dir)
    manifest = read_json(model_dir / "manifest.json", ModelError, "not an exported cbldm model", FORMAT)
    theirs, ours = manifest.get("preprocessing", {}), constants()
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ:
        # feeding a model inputs prepared differently from its training gives confident garbage
        raise ModelError(f"{model_dir}: trained with other preprocessing than this runtime applies "
                         f"({', '.join(differ)}); re-export it with this version")
    if verify:
        for name in GRAPH_NAMES:
            for precision in ("fp32", "fp16"):
                entry = manifest["graphs"][name].get(precision)
                if entry is None:
                    continue
                f = model_dir / entry["file"]
                if not f.exists():
                    raise ModelError(f"{f}: missing (listed in the manifest)")
                if sha256_file(f) != entry["sha256"]:
                    raise ModelError(f"{f}: hash differs from the manifest (file changed or corrupt)")
    return manifest


def model_hash(manifest: dict) -> str:
    """One identifier for a model: the hash of its graphs' hashes."""
    parts = [manifest["graphs"][n]["fp32"]["sha256"] for n in GRAPH_NAMES]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


class OrtGraph:
    def __init__(self, path: Path, providers: list, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, *arrays):
        feeds = {n: np.ascontiguousarray(a) for n, a in zip(self.inputs, arrays)}
        out = self.session.run(self.outputs, feeds)
        return out[0] if len(out) == 1 else tuple(out)


class TensorRTGraph:
    """One engine: device buffers, set_tensor_address, execute_async_v3 on a CUDA stream.

    Untested on these machines (no TensorRT); written against the TensorRT 10 API.
    """

    def __init__(self, engine_path: Path):
        import tensorrt as trt
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6
            from cuda import cudart

        self.trt, self.cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = self._check(cudart.cudaStreamCreate())

    @staticmethod
    def _check(res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def providers(self) -> list[str]:
        return ["TensorRT"]

    def __call__(self, *arrays):
        trt, cudart = self.trt, self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocs, outs = [], []
        try:
            for name, arr in zip(self.inputs, arrays):
                arr = np.ascontiguousarray(arr, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                self.context.set_input_shape(name, arr.shape)
                ptr = self._check(cudart.cudaMalloc(arr.nbytes))
                allocs.append(ptr)
                self._check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
                self.context.set_tensor_address(name, ptr)
            for name in self.outputs:
                host = np.empty(tuple(self.context.get_tensor_shape(name)),
                                dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                ptr = self._check(cudart.cudaMalloc(host.nbytes))
                allocs.append(ptr)
                self.context.set_tensor_address(name, ptr)
                outs.append((host, ptr))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            for host, ptr in outs:
                self._check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            for ptr in allocs:
                cudart.cudaFree(ptr)
        res = [h for h, _ in outs]
        return res[0] if len(res) == 1 else tuple(res)


@dataclass
class LoadedModel:
    """The four graphs as numpy callables (the pipeline's ``Networks``), plus what runs them."""

    model_dir: Path
    manifest: dict
    backend: str
    precision: str
    graphs: dict
    providers: dict = field(default_factory=dict)
    warmup_s: float = 0.0

    @property
    def condition(self):
        return self.graphs["condition"]

    @property
    def prior(self):
        return self.graphs["prior"]

    @property
    def unet(self):
        g = self.graphs["unet"]
        return lambda x, t, cond: g(np.asarray(x, np.float32), np.asarray(t, np.int64), np.asarray(cond, np.float32))

    @property
    def decoder(self):
        return self.graphs["decoder"]

    @property
    def hash(self) -> str:
        return model_hash(self.manifest)


def _available_ort_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def load_model(model_dir: Path, backend: str = "auto", precision: str = "fp32",
               threads: int | None = None, warmup: bool = True) -> LoadedModel:
    """Open MODELDIR on ``backend`` (auto, tensorrt, cuda, cpu) in ``precision`` (fp32, fp16)."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if precision not in ("fp32", "fp16"):
        raise ModelError(f"unknown precision {precision!r} (fp32, fp16)")
    order = {"auto": ["tensorrt", "cuda", "cpu"], "tensorrt": ["tensorrt"], "cuda": ["cuda"], "cpu": ["cpu"]}
    if backend not in order:
        raise ModelError(f"unknown backend {backend!r} (auto, tensorrt, cuda, cpu)")
    reasons = []
    for cand in order[backend]:
        try:
            graphs, providers = _open(model_dir, manifest, cand, precision, threads)
        except _Unavailable as exc:
            reasons.append(f"{cand}: {exc}")
            continue
        m = LoadedModel(model_dir, manifest, cand, precision, graphs, providers)
        if warmup:
            t0 = time.perf_counter()
            _warm(m)
            m.warmup_s = time.perf_counter() - t0
        return m
    raise ModelError(f"{model_dir}: no usable backend ({'; '.join(reasons)})")


class _Unavailable(Exception):
    pass


def _open(model_dir: Path, manifest: dict, backend: str, precision: str, threads):
    graphs, providers = {}, {}
    if backend == "tensorrt":
        engines = manifest.get("tensorrt") or {}
        if not engines:
            raise _Unavailable("the model has no TensorRT engines (cbldm-export --tensorrt)")
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:
            raise _Unavailable(f"tensorrt not importable ({type(exc).__name__})") from None
        for name in GRAPH_NAMES:
            graphs[name] = TensorRTGraph(model_dir / engines[name]["file"])
            providers[name] = ["TensorRT"]
        return graphs, providers
    want = "CUDAExecutionProvider" if backend == "cuda" else "CPUExecutionProvider"
    if want not in _available_ort_providers():
        raise _Unavailable(f"onnxruntime has no {want} (install onnxruntime-gpu for CUDA)")
    provider_list = [want] if backend == "cpu" else [want, "CPUExecutionProvider"]
    for name in GRAPH_NAMES:
        entry = manifest["graphs"][name].get(precision) or manifest["graphs"][name]["fp32"]
        g = OrtGraph(model_dir / entry["file"], provider_list, threads)
        got = g.providers()
        if backend == "cuda" and "CUDAExecutionProvider" not in got:
            # onnxruntime fell back to the CPU (CUDA libraries missing): not what was asked for
            raise _Unavailable(f"CUDA provider failed to load for {name}; session got {got}")
        graphs[name] = g
        providers[name] = got
    return graphs, providers


def _warm(m: LoadedModel) -> None:
    pdf = np.zeros((1, 6, 500), np.float32)
    pdf[0, :, 100] = 1.0
    cond = m.condition(pdf)
    m.prior(pdf)
    m.unet(np.zeros((1, 1, 16, 16), np.float32), np.array([500]), cond)
    m.decoder(np.zeros((1, 1, 16, 16), np.float32))
