"""TensorRT engines from the exported ONNX graphs (TensorRT >= 10 Python API).

Precision lives in the ONNX graph (TensorRT 11 removed weak typing and BuilderFlag.FP16):
the network is created STRONGLY_TYPED, so ``*.fp16.onnx`` builds an fp16 engine with its
fp32 islands and ``*.onnx`` an fp32 one. One optimisation profile covers the batch sizes
(min = smallest, opt = the middle one, max = the largest); a timing cache is persisted
beside the engines so rebuilds are fast.

UNTESTED HERE: TensorRT does not install from PyPI on these machines and is not on the
lent GPUs. ``tests/test_export.py`` runs this where ``tensorrt`` imports and a GPU is
present and skips with that reason elsewhere.
"""
from __future__ import annotations

from pathlib import Path

from cbldm.runtime.fileutil import sha256_file


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a stub package without its libraries
        return False, f"tensorrt not importable ({type(exc).__name__})"
    return True, "ok"


def build_engine(onnx_path: Path, engine_path: Path, input_shapes: dict[str, list],
                 batch_sizes: tuple[int, ...], workspace_gb: float = 2.0,
                 timing_cache: Path | None = None, log=print) -> dict:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    lo, hi = min(batch_sizes), max(batch_sizes)
    opt = sorted(batch_sizes)[len(batch_sizes) // 2]
    profile = builder.create_optimization_profile()
    for name, shape in input_shapes.items():
        rest = [int(d) for d in shape[1:]]
        profile.set_shape(name, [lo, *rest], [opt, *rest], [hi, *rest])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"{engine_path.name}: built, batch {lo}..{hi} (opt {opt}), {engine_path.stat().st_size / 1e6:.1f} MB")
    return {"file": engine_path.name, "sha256": sha256_file(engine_path),
            "batch_min": lo, "batch_opt": opt, "batch_max": hi, "tensorrt": trt.__version__}


def build_engines(out: Path, graphs: dict, batch_sizes: tuple[int, ...], fp16: bool, log=print) -> dict:
    """Engines per precision, the manifest's ``tensorrt`` section: {"fp32": {graph: entry},
    "fp16": {...}} (fp16 only with ``fp16``). Each entry says the precision its engine computes
    in: a graph without an fp16 ONNX reuses its fp32 engine in the fp16 set, marked fp32, so
    the runtime can report what really runs (``cbldm.runtime.backends.select_engines``)."""
    ok, why = tensorrt_available()
    if not ok:
        raise RuntimeError(f"--tensorrt: {why}; engines are built on a machine with TensorRT and a GPU")
    engines: dict[str, dict] = {}
    cache = out / "tensorrt.timing_cache"
    for precision in ("fp32", "fp16") if fp16 else ("fp32",):
        engines[precision] = {}
        for name, g in graphs.items():
            if precision not in g:
                engines[precision][name] = engines["fp32"][name]
                continue
            suffix = "" if precision == "fp32" else f".{precision}"
            entry = build_engine(out / g[precision]["file"], out / f"{name}{suffix}.plan", g["inputs"],
                                 batch_sizes, timing_cache=cache, log=log)
            engines[precision][name] = {**entry, "precision": precision}
    return engines
