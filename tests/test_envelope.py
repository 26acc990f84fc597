"""The lattice sphere of fitted diameter (cbldm.runtime.envelope) for particles beyond the library."""
import numpy as np
import pytest

from cbldm.runtime.envelope import atoms_in_sphere, fit_envelope, gamma0, lattice_points, shells, sphere_cut
from cbldm.runtime.fitting import FilePhysics, fit_grid
from cbldm.runtime.pdf import DebyePDF, PDFParams


@pytest.mark.parametrize("lattice, first", [("fcc", [12, 6, 24, 12]), ("hcp", [12, 6, 2, 18]),
                                            ("bcc", [8, 6, 12, 24]), ("sc", [6, 12, 8, 6])])
def test_shells_are_the_lattices_coordination_shells(lattice, first):
    r, m = shells(lattice, 3.0)
    assert r[0] == pytest.approx(1.0)
    assert m[:4].tolist() == first


@pytest.mark.parametrize("lattice", ["fcc", "hcp", "bcc"])
def test_sphere_pair_counts_follow_the_characteristic_function(lattice):
    # the envelope model's pair counts against those of a sphere actually cut from the lattice
    d = 16.0
    x = sphere_cut(lattice, 1.0, d)
    assert len(x) == pytest.approx(atoms_in_sphere(lattice, 1.0, d), rel=0.03)
    from scipy.spatial.distance import pdist

    cut = np.bincount(np.rint(pdist(x) * 4).astype(int))           # pairs per 0.25 bond
    r, m = shells(lattice, d)
    model = np.bincount(np.rint(r * 4).astype(int), m * gamma0(r, d) * len(x) / 2, minlength=len(cut))
    # summed over 2-bond windows (a cut's shells scatter around the smooth count)
    # to 3/4 of the diameter (beyond, the few longest pairs depend on the cut's surface atoms)
    starts = np.arange(4, int(0.75 * d * 4), 8)
    a = np.add.reduceat(cut, starts)[:-1]
    b = np.add.reduceat(model[:len(cut)], starts)[:-1]
    assert np.abs(a / b - 1).max() < 0.03


def test_lattice_points_hold_the_origin_and_are_a_bond_apart():
    p = lattice_points("hcp", 4.0)
    assert np.min(np.linalg.norm(p, axis=1)) == pytest.approx(0.0)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(p).query(p, k=2)
    assert dist[:, 1] == pytest.approx(np.ones(len(p)))


def test_envelope_fit_finds_the_diameter_of_a_sphere_larger_than_it_starts():
    # a 36 A gold sphere (~1,500 atoms) with an instrument's damping, the exact calculator's PDF
    bond, dia = 2.885, 36.0
    x = sphere_cut("fcc", bond, dia)
    p = PDFParams(rmin=0.0, rmax=45.0, rstep=0.01, qmin=0.8, qmax=22.0, biso=0.5, qdamp=0.03)
    calc = DebyePDF(p)
    g = calc.calc(x, "Au", method="histogram")
    g = g + np.random.default_rng(0).normal(scale=0.005 * np.abs(g).max(), size=g.shape)
    grid = fit_grid(FilePhysics(0.8, 22.0, 1.5, 45.0))
    e = fit_envelope(grid, np.interp(grid.r_fit, calc.r, g), "fcc", bond * 1.003, 20.0)
    assert e.diameter == pytest.approx(dia, rel=0.04)
    assert e.bond == pytest.approx(bond, rel=0.002)
    assert e.fit.qdamp == pytest.approx(0.03, abs=0.006)
    assert e.n_atoms == pytest.approx(len(x), rel=0.12)
    # as close as the true structure itself fits
    assert not e.at_max and e.fit.rwp < 1.1 * grid.fit(x, np.interp(grid.r_fit, calc.r, g)).rwp
    assert len(e.structure()) == pytest.approx(e.n_atoms, rel=0.03)


def _sphere_pdf(lattice, bond, dia, rmax=45.0, qdamp=0.03, element="Au"):
    x = sphere_cut(lattice, bond, dia)
    p = PDFParams(rmin=0.0, rmax=rmax, rstep=0.01, qmin=0.8, qmax=22.0, biso=0.5, qdamp=qdamp)
    calc = DebyePDF(p)
    g = calc.calc(x, element, method="histogram")
    grid = fit_grid(FilePhysics(0.8, 22.0, 1.5, rmax))
    return x, grid, np.interp(grid.r_fit, calc.r, g)


def test_envelope_fit_of_an_hcp_sphere_scans_down_below_its_start():
    # started above the particle's diameter, the scan goes on down to it
    x, grid, g = _sphere_pdf("hcp", 2.5, 25.0, rmax=35.0)
    e = fit_envelope(grid, g, "hcp", 2.5, 32.0)
    assert e.diameter == pytest.approx(25.0, rel=0.05) and not e.at_max
    assert "diameter" not in e.fit.at_bounds


def test_envelope_fit_says_at_least_where_the_diameter_runs_to_the_end_of_its_scan():
    x, grid, g = _sphere_pdf("fcc", 2.885, 36.0)
    e = fit_envelope(grid, g, "fcc", 2.885, 20.0, d_max=28.0)
    assert e.at_max and "diameter" in e.fit.at_bounds and e.diameter <= 28.0
    e = fit_envelope(grid, g, "fcc", 2.885, 50.0, d_max=40.0)    # a start beyond the end: scanned below it
    assert e.diameter == pytest.approx(36.0, rel=0.04) and not e.at_max


def test_pipeline_answers_a_particle_beyond_the_library_with_a_sphere_of_its_diameter(tmp_path):
    """A library of two fcc spheres of 2,899 and 3,151 atoms, and the PDF of a 5,979-atom gold
    sphere measured with an instrument's damping: the answer is the fitted sphere (count within
    10 %), doubtful with the reason, the library's clusters listed behind it. The PDF of one of
    the library's own clusters is answered with it: nothing large to fit there."""
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pipeline import PDFInput, RefineConfig, predict
    from cbldm.runtime.sampling import SamplerConfig

    small = [sphere_cut("fcc", 1.0, d) for d in (15.7, 16.3)]
    assert [len(x) for x in small] == [2899, 3151]
    write_library(tmp_path / "lib.npz", [(f"ext:fcc_sphere_n{len(x)}", "fcc", "extended", x) for x in small],
                  log=None)
    lib = Library(tmp_path / "lib.npz")
    bond = 2.885
    truth = sphere_cut("fcc", bond, 20.0 * bond)
    p = PDFParams(rmin=0.0, rmax=60.0, rstep=0.01, qmin=0.8, qmax=22.0, biso=0.5, qdamp=0.035)
    calc = DebyePDF(p)
    g = calc.calc(truth, "Au", method="histogram")
    g = g + np.random.default_rng(1).normal(scale=0.005 * np.abs(g).max(), size=g.shape)
    pdf = PDFInput(calc.r, g, "Au", physics=FilePhysics(0.8, 22.0, 1.5, 60.0))
    pred = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib)
    best = pred.best
    assert best.envelope is not None and best.label.startswith("envelope:fcc")
    assert best.n_atoms == pytest.approx(len(truth), rel=0.1)
    assert pred.verdict.verdict == "doubtful" and any("attenuated crystal" in w for w in pred.verdict.warnings)
    assert {c.label for c in pred.candidates[1:]} >= {f"ext:fcc_sphere_n{len(x)}" for x in small}
    # without it, the largest cluster is the answer
    old = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib,
                  refine=RefineConfig(envelope=False))
    assert old.best.n_atoms == len(small[1]) and best.rwp < old.best.rwp
    assert any("among the largest fcc clusters tried" in w for w in old.verdict.warnings)

    own = small[1] * bond
    g = calc.calc(own, "Au", method="histogram")
    pred = predict(None, PDFInput(calc.r, g, "Au", physics=FilePhysics(0.8, 22.0, 1.5, 60.0)),
                   SamplerConfig(), 0, source="library", library=lib)
    assert pred.best.envelope is None and pred.best.n_atoms == len(own)
    assert not any("largest" in w for w in pred.verdict.warnings)    # it fits at the calculator's level


@pytest.mark.parametrize("element, a, ca", [("Ru", 2.706, 1.582), ("Zn", 2.665, 1.856)])
def test_envelope_fit_of_a_real_hcp_metal_finds_its_c_over_a(element, a, ca):
    # real hcp metals on both sides of the ideal 1.633: with the ideal ratio the far peaks miss,
    # and far from it (Zn) a must follow c while the ratio is scanned
    from cbldm.runtime.structure import nn_length

    x = sphere_cut("hcp", a, 30.0, ca)
    p = PDFParams(rmin=0.0, rmax=35.0, rstep=0.01, qmin=0.8, qmax=24.0, biso=0.5, qdamp=0.03)
    calc = DebyePDF(p)
    grid = fit_grid(FilePhysics(0.8, 24.0, 1.5, 35.0))
    g = np.interp(grid.r_fit, calc.r, calc.calc(x, element, method="histogram"))
    e = fit_envelope(grid, g, "hcp", nn_length(x), 20.0)      # the bond a library fit would give
    assert e.ca == pytest.approx(ca, abs=0.003) and e.bond == pytest.approx(a, rel=0.002)
    assert e.diameter == pytest.approx(30.0, rel=0.05)
    # noise-free, a 1,000-atom sphere's cut surface leaves ~0.02 to the smooth envelope; the
    # ideal ratio's far peaks leave far more
    assert e.fit.rwp < 0.03
    assert len(e.structure()) == pytest.approx(e.n_atoms, rel=0.05)


def test_vertex_of_a_scan():
    from cbldm.runtime.envelope import _vertex

    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert _vertex(x, np.sqrt((x - 2.3) ** 2 + 1)) == pytest.approx(2.3)     # Rwp^2 a parabola
    assert _vertex(x, np.array([np.nan, 3.0, 2.0, 4.0])) == pytest.approx(3.0, abs=0.5)   # NaN never wins
    assert _vertex(x, np.array([1.0, 2.0, 3.0, 4.0])) == 1.0                            # an edge stays there
