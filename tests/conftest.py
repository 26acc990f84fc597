import os
import re
from pathlib import Path

# as the CLIs do (cbldm.runtime.cliutil): numpy's and scipy's OpenBLAS pools must not spin
# against each other, or in-process predictions run several times slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_reference() -> Path | None:
    env = os.environ.get("CBLDM_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "reference" / "deepstruc",
                   REPO / "shared" / "reference" / "deepstruc"]
    for c in candidates:
        if (c / "graphs").is_dir():
            return c
    return None


REFERENCE = _find_reference()


@pytest.fixture(scope="session")
def reference() -> Path:
    if REFERENCE is None:
        pytest.skip("../shared/reference/deepstruc not present (set CBLDM_REFERENCE)")
    return REFERENCE


def reference_graphs(ref: Path):
    """(name, xyz, element, nn_distance, DiffPy G) for each reference structure."""
    import h5py

    out = []
    for f in sorted((ref / "graphs").glob("*.h5")):
        with h5py.File(f, "r") as h:
            xyz = h["Node Feature Matrix"][()]
            g = h["PDF label"][()]
        el = re.search(r"atom_([A-Z][a-z]?)_", f.name).group(1)
        lc = float(re.search(r"_lc1?_([0-9.]+?)(?:_lc2|\.h5)", f.name).group(1))
        out.append((f.stem, xyz, el, lc, g))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """28 structures (4 per type), shared by the training and export tests."""
    from cbldm.training.dataset import generate

    out = tmp_path_factory.mktemp("tinyds")
    generate(out, limit=28, workers=1, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """A tiny-preset model trained for one epoch per stage."""
    torch = pytest.importorskip("torch")
    from cbldm.training.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("tinyrun") / "run"
    tr = Trainer(run, tiny_dataset, TrainConfig(preset="tiny", epochs={"condition": 1, "structure": 1,
                                                                       "denoiser": 1}), log=lambda m: None)
    for stage in ("condition", "structure", "denoiser"):
        tr.run_stage(stage)
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_run, tmp_path_factory):
    """tiny_run exported with the default (dynamo) exporter, fp32 + fp16."""
    from cbldm.export.onnx_export import export_run

    out = tmp_path_factory.mktemp("tinymodel") / "model"
    export_run(tiny_run, out, fp16=True, log=lambda m: None)
    return out
