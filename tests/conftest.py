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

    from cbldm.export.onnx_export import attach_library
    from cbldm.models import default_model_dir

    out = tmp_path_factory.mktemp("tinymodel") / "model"
    export_run(tiny_run, out, fp16=True, log=lambda m: None)
    # the shipped cluster library: a tiny model's networks decode next to nothing
    attach_library(out, default_model_dir() / "library.npz")
    return out


@pytest.fixture
def fake_model():
    """``make(xyz=None, noise=0.0, **graphs)``: a LoadedModel whose four graphs are numpy
    functions, so a test controls exactly what the "networks" return. The decoder gives, for
    every row, the kernel of ``xyz`` (the networks' frame: first shell at D_REF; default a
    51-atom decahedron) with row i's atoms moved by N(0, noise) from seed i, so repeated
    calls give the same candidates. Keyword arguments replace graphs by name."""
    from cbldm.runtime.backends import GRAPH_NAMES, LoadedModel
    from cbldm.runtime.kernel import kernel_matrix, to_blocks
    from cbldm.runtime.pdf import DEEPSTRUC_PARAMS
    from cbldm.runtime.preprocess import D_REF
    from cbldm.runtime.sampling import Schedule
    from cbldm.training.clusters import unit_shapes

    def make(xyz=None, noise=0.0, **graphs):
        if xyz is None:
            xyz = next(s for s in unit_shapes("Decahedron") if s.n_atoms == 51).xyz_unit * D_REF

        def decoder(z):
            rows = [xyz + np.random.default_rng(i).normal(0, noise, xyz.shape) for i in range(len(z))]
            return np.stack([to_blocks(kernel_matrix(r)) for r in rows]).astype(np.float32)

        nets = {"condition": lambda pdf: np.zeros((len(pdf), 2, 125), np.float32),
                "prior": lambda pdf: (np.zeros((len(pdf), 1, 16, 16), np.float32),
                                      np.zeros((len(pdf), 1, 16, 16), np.float32)),
                "unet": lambda x, t, cond: np.zeros_like(x),
                "decoder": decoder}
        nets.update(graphs)
        manifest = {"graphs": {n: {"fp32": {"file": f"{n}.onnx", "sha256": "0" * 64}} for n in GRAPH_NAMES},
                    "sampler": {"t1": 999, "t2": 100, "steps_before": 0, "steps_after": 2},
                    "schedule": Schedule().as_dict(), "pdf_params": DEEPSTRUC_PARAMS.as_dict()}
        return LoadedModel(Path("fake-model"), manifest, "cpu", "fp32", nets,
                           providers={n: ["numpy"] for n in GRAPH_NAMES},
                           precisions={n: "fp32" for n in GRAPH_NAMES})

    return make


@pytest.fixture(scope="session")
def calc():
    """The calculator with the training physics (DeepStruc's simulations)."""
    from cbldm.runtime.pdf import DEEPSTRUC_PARAMS, DebyePDF

    return DebyePDF(DEEPSTRUC_PARAMS)


PT_BOND = 2.77   # A: the Pt nearest-neighbour distance the search and strain tests build with


def recipe_shape(label: str, bond: float = PT_BOND) -> np.ndarray:
    """A recipe shape by its label (``HCP_Size1_3_Size2_4_Size3_4``), at ``bond``, centred."""
    from cbldm.runtime.structure import nn_length
    from cbldm.training.clusters import unit_shapes

    kind = label.split("_")[0]
    x = next(s for s in unit_shapes(kind) if s.label() == label).xyz_unit
    x = x / nn_length(x) * bond
    return x - x.mean(0)
