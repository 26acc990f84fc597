"""Icosahedra and decahedra built past the library (cbldm.runtime.mtp) and the walk that uses them."""
import math

import numpy as np
import pytest

from cbldm.runtime import mtp
from cbldm.runtime.library import family_of


def _radii(x):
    return np.sort(np.linalg.norm(x - x.mean(0), axis=1))


@pytest.mark.parametrize("shells", [2, 3, 6, 11])
def test_icosahedra_are_ases_mackay_icosahedra(shells):
    from ase.cluster import Icosahedron

    from cbldm.training.variants import unit_bond

    ref = unit_bond(Icosahedron("Cu", shells, latticeconstant=math.sqrt(2)).get_positions())
    x = mtp.icosahedron(shells)
    assert len(x) == len(ref) == mtp.atoms(mtp.FAMILIES[0], (shells,))
    assert np.abs(_radii(x) - _radii(ref)).max() < 1e-9


@pytest.mark.parametrize("pqr", [(2, 1, 0), (3, 2, 1), (1, 4, 0), (9, 4, 2), (5, 8, 3), (12, 7, 1)])
def test_decahedra_are_ases_marks_decahedra(pqr):
    from ase.cluster import Decahedron

    from cbldm.training.variants import unit_bond

    ref = unit_bond(Decahedron("Cu", *pqr, latticeconstant=math.sqrt(2)).get_positions())
    x = mtp.decahedron(*pqr)
    assert len(x) == len(ref) == mtp.atoms(mtp.FAMILIES[1], pqr)
    assert np.abs(_radii(x) - _radii(ref)).max() < 1e-9
    # the same shape, not only the same radii: the pair distances too
    from scipy.spatial.distance import pdist

    if len(x) <= 400:
        assert np.abs(np.sort(pdist(x)) - np.sort(pdist(ref))).max() < 1e-9


def test_names_are_the_librarys_and_give_the_family_back():
    for fam, par in ((mtp.FAMILIES[0], (12,)), (mtp.FAMILIES[1], (9, 4, 2))):
        name = mtp.name_of(fam, par)
        assert family_of(name) == (fam, par)
        assert len(mtp.build(name)) == mtp.atoms(fam, par)
    assert mtp.build("ext:fcc_sphere_c0_n2988") is None
    with pytest.raises(ValueError):
        mtp.decahedron(0, 1, 0)


def test_pipeline_walks_an_icosahedron_past_the_librarys_largest(tmp_path, monkeypatch):
    """A library of icosahedra of 5-7 shells and the PDF of a 9-shell one (2,057 atoms): the
    walk builds 8 and 9 shells and answers with 9, without the library's-ceiling warning."""
    import cbldm.runtime.pipeline as pipeline
    from cbldm.runtime.fitting import FilePhysics
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pdf import DebyePDF, PDFParams
    from cbldm.runtime.sampling import SamplerConfig

    monkeypatch.setattr(pipeline, "ENVELOPE_FROM_ATOMS", 300)   # the shipped 1,500 with a small library
    write_library(tmp_path / "lib.npz", [(f"ext:icosahedron_{k}shells", "icosahedral", "extended", mtp.icosahedron(k))
                                         for k in (5, 6, 7)], log=None)
    bond = 2.885
    truth = mtp.icosahedron(9) * bond
    p = PDFParams(rmin=0.0, rmax=40.0, rstep=0.01, qmin=0.8, qmax=22.0, biso=0.5, qdamp=0.03)
    calc = DebyePDF(p)
    g = calc.calc(truth, "Au", method="histogram")
    g = g + np.random.default_rng(2).normal(scale=0.003 * np.abs(g).max(), size=g.shape)
    pdf = pipeline.PDFInput(calc.r, g, "Au", physics=FilePhysics(0.8, 22.0, 1.5, 40.0))
    pred = pipeline.predict(None, pdf, SamplerConfig(), 0, source="library", library=Library(tmp_path / "lib.npz"))
    assert pred.best.label == "ext:icosahedron_9shells" and pred.best.n_atoms == len(truth)
    assert pred.best.via and "past the library" in pred.best.via
    assert not any("largest" in w for w in pred.verdict.warnings), pred.verdict.warnings
    labels = {c.label for c in pred.candidates}
    assert {"ext:icosahedron_8shells", "ext:icosahedron_10shells"} <= labels    # the walk's steps
    # a walk that stops only where members grow too large to build says the particle may be larger
    monkeypatch.setattr(pipeline, "MTP_MAX_ATOMS", 1500)
    pred = pipeline.predict(None, pdf, SamplerConfig(), 0, source="library", library=Library(tmp_path / "lib.npz"))
    assert pred.best.label == "ext:icosahedron_8shells"
    assert any("among the largest icosahedral clusters tried (up to 1500 atoms)" in w for w in pred.verdict.warnings)
