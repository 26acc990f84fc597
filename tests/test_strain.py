"""Homogeneous strain (cbldm.runtime.refine.fit_strain, pipeline._strain): a particle whose
lattice is stretched differently along its axes (an hcp metal's own c/a, a support's misfit)
is fitted by its ideal shape strained, not re-cut into another shape; an ideal particle's fit
is left as it is."""
import numpy as np
import pytest
from conftest import PT_BOND, recipe_shape

from cbldm.runtime.fitting import fit_grid
from cbldm.runtime.pipeline import PDFInput, _strain, independent_points
from cbldm.runtime.refine import fit_strain
from cbldm.training.clusters import sorted_distances

D = PT_BOND


def _shape(label: str) -> np.ndarray:
    return recipe_shape(label, D)


def _fitted(calc, truth, start):
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    grid = fit_grid(pdf.physics)
    g = np.interp(grid.r_fit, pdf.r, pdf.g)
    fit = grid.fit(start, g)
    return pdf, grid, g, fit, (start - start.mean(0)) * fit.size


def _deviatoric(e):
    return np.sort(np.linalg.eigvalsh(e - np.trace(e) / 3 * np.eye(3)))


@pytest.mark.parametrize("label,stretch", [
    # cubic: at zero strain the gradient is isotropic (a saddle); needs the orthorhombic starts
    ("BCC_h_4_k_4_l_5", (1.024, 1.0, 0.977)),
    # hcp with c/a 2 % above the ideal and a small stretch in the basal plane
    ("HCP_Size1_2_Size2_4_Size3_6", (1.0, 1.008, 1.02)),
])
def test_fit_strain_recovers_the_stretch(calc, label, stretch):
    ideal = _shape(label)
    truth = ideal * np.array(stretch)
    pdf, grid, g, fit, start = _fitted(calc, truth, ideal)
    assert fit.rwp > 0.05      # the size alone cannot follow it
    s = fit_strain(grid, fit, start, g)
    assert s.rwp < 0.01 and s.rwp < 0.1 * s.rwp_start and s.rwp_start == fit.rwp, (s.rwp, s.rwp_start)
    want = np.log(np.array(stretch))
    assert np.allclose(_deviatoric(s.strain), np.sort(want - want.mean()), atol=0.002), s.strain
    # and the structure it hands back has the truth's pair distances
    a, b = sorted_distances(s.xyz), sorted_distances(truth)
    assert np.mean(np.abs(a - b)) < 0.01


def test_an_ideal_particle_keeps_its_fit(calc):
    """Negative control: in noise (Rwp 0.05 from the noise alone) the ideal shape's fit gains
    only noise from a strain, too little for the criterion to pay for five numbers."""
    from cbldm.runtime.pipeline import Candidate

    truth = _shape("Decahedron_p_2_q_3_r_1")
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    grid = fit_grid(pdf.physics)
    g = np.interp(grid.r_fit, pdf.r, pdf.g)
    sigma = 0.05 * np.linalg.norm(g) / np.sqrt(len(g))
    g = g + np.random.default_rng(0).normal(scale=sigma, size=len(g))
    fit = grid.fit(truth, g)
    c = Candidate(truth * fit.size, "library", "deca", fit=fit, rwp=fit.rwp, rwp_rigid=fit.rwp)
    assert _strain(c, grid, g, independent_points(pdf.physics), 0.2) is c
    assert np.abs(fit_strain(grid, fit, c.xyz, g).strain).max() < 5e-3


def test_a_particle_with_vacancies_is_not_bent_by_a_strain(calc):
    """The full decahedron against the PDF of itself less three atoms: a strain lowers Rwp by
    10 % (it bends the wrong structure toward the data, and pays for its five numbers by
    Akaike's criterion on noise-free data), but not by the 20 % a structural change must
    bring, so the candidate is left for the atom search."""
    from cbldm.runtime.pipeline import Candidate, _misfit

    full = _shape("Decahedron_p_2_q_3_r_1")
    truth = np.delete(full, np.random.default_rng(1).choice(len(full), 3, replace=False), axis=0)
    pdf, grid, g, fit, start = _fitted(calc, truth, full)
    n_ind = independent_points(pdf.physics)
    s = fit_strain(grid, fit, start, g)
    refit = grid.fit(s.xyz, g, sizes=np.array([1.0]), start=(s.biso, fit.delta2, s.qdamp))
    assert _misfit(refit.rwp, n_ind) + 10 < _misfit(fit.rwp, n_ind)     # Akaike alone would take it
    c = Candidate(start, "library", "deca", fit=fit, rwp=fit.rwp, rwp_rigid=fit.rwp)
    assert _strain(c, grid, g, n_ind, 0.2) is c


def test_an_ideal_fit_is_not_strained_by_the_pipeline(calc, tmp_path):
    """Noise-free and ideal: settled before any strain is tried (nothing reported)."""
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pipeline import predict
    from cbldm.runtime.sampling import SamplerConfig

    truth = _shape("Decahedron_p_2_q_3_r_1")
    write_library(tmp_path / "lib.npz", [("recipe:deca", "decahedral", "recipe", truth / D)], log=None)
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    pred = predict(None, pdf, SamplerConfig(), 0, source="library", library=Library(tmp_path / "lib.npz"))
    assert pred.best.fit.strain is None and "strain_s" not in pred.timings and pred.best.rwp < 1e-3


def test_pipeline_answers_a_strained_prism_with_its_shape_and_says_the_strain(calc, tmp_path):
    """The wiring: the library holds the ideal prism; the data are that prism with c 2.5 %
    longer. The answer is the prism (not a re-cut one), strained, its principal strains in the
    fit's parameters, fitted on the Q grid of the Biso the strained fit found (the rigid fit's
    Biso, 0.58, left Rwp 0.0035); without the strain fit the same run leaves Rwp > 0.1."""
    from cbldm.runtime.fitting import fit_grid, grid_for
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pipeline import RefineConfig, predict
    from cbldm.runtime.sampling import SamplerConfig

    ideal = _shape("HCP_Size1_1_Size2_4_Size3_8")
    truth = ideal * np.array([0.99, 0.99, 1.025])
    write_library(tmp_path / "lib.npz", [("recipe:prism", "hcp", "recipe", ideal / D)], log=None)
    lib = Library(tmp_path / "lib.npz")
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    pred = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib)
    best = pred.best
    assert best.n_atoms == len(truth) and best.rwp < 1e-3, (best.n_atoms, best.rwp, best.label)
    assert grid_for(fit_grid(pdf.physics, pred.q_grid_biso), best.fit.biso) is None
    principal = best.fit.params()["strain_principal"]
    assert principal is not None and principal[0] > 0.015 and principal[-1] < -0.005, principal
    assert np.mean(np.abs(sorted_distances(best.xyz) - sorted_distances(truth))) < 0.02
    off = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib,
                  refine=RefineConfig(strain=False, top=0, search=0))
    assert off.best.rwp > 0.1 and off.best.fit.params()["strain_principal"] is None


def test_a_strained_start_is_searched_also_as_it_was(calc, tmp_path, monkeypatch):
    """The library holds only a prism two layers longer than the strained particle: the
    strained long prism is the best fit, and the searches start from it and from the long
    prism as it was (a strain fitted to the wrong cut can lead them away from the right one)."""
    from cbldm.runtime import pipeline
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.sampling import SamplerConfig

    truth = _shape("HCP_Size1_1_Size2_4_Size3_8") * np.array([0.99, 0.99, 1.025])
    longer = _shape("HCP_Size1_1_Size2_4_Size3_10")
    write_library(tmp_path / "lib.npz", [("recipe:longer", "hcp", "recipe", longer / D)], log=None)
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    searched, search = [], pipeline._search
    monkeypatch.setattr(pipeline, "_search",
                        lambda c, *a: searched.append(c.fit.strain is not None) or search(c, *a))
    pred = pipeline.predict(None, pdf, SamplerConfig(), 0, source="library", library=Library(tmp_path / "lib.npz"))
    assert sorted(searched) == [False, True], searched
    # re-cut toward the particle (80 -> 68 atoms for 64: the layer search takes off a layer
    # and a half of the strained rod's ends, Rwp 0.0035), not left at the library's length
    assert abs(pred.best.n_atoms - len(truth)) < abs(len(longer) - len(truth)) / 2, pred.best.label


def test_the_walk_carries_the_strain_to_the_family_member_that_fits(calc, tmp_path, monkeypatch):
    """The library's search proposes only a prism two layers longer than the strained particle
    (the rest of its family is in the library): the strain is fitted on the long prism, and the
    walk along the family takes that strain to the shorter members. The strain fitted on the
    10-layer prism also absorbed its wrong length: carried, it takes the walk to 9 layers only
    (0.0037; 8 layers 0.0038); fitted again at 9 layers, it takes the walk on to 8, where,
    fitted once more, it fits to the noise floor, strained as it is."""
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pipeline import predict
    from cbldm.runtime.sampling import SamplerConfig

    label = "HCP_Size1_1_Size2_4_Size3_{}"
    truth = _shape(label.format(8)) * np.array([0.99, 0.99, 1.025])
    write_library(tmp_path / "lib.npz", [(f"recipe:{label.format(n)}", "hcp", "recipe", _shape(label.format(n)) / D)
                                          for n in range(5, 13)], log=None)
    lib = Library(tmp_path / "lib.npz")
    search = lib.search
    monkeypatch.setattr(lib, "search", lambda *a, **k: [h for h in search(*a, **k) if h.name.endswith("_10")])
    pdf = PDFInput.on_model_grid(calc.calc(truth, "Pt"), "Pt")
    pred = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib)
    best = pred.best
    assert best.label == f"recipe:{label.format(8)}" and best.rwp < 1e-3, (best.label, best.rwp)
    assert best.unstrained is not None and best.unstrained.label == best.label
    # the member walked through carried a strain never judged on it: not among the candidates
    assert f"recipe:{label.format(9)}" not in [c.label for c in pred.candidates]
    principal = best.fit.params()["strain_principal"]
    assert principal is not None and principal[0] > 0.015 and principal[-1] < -0.005, principal
    assert np.mean(np.abs(sorted_distances(best.xyz) - sorted_distances(truth))) < 0.02
    assert "walk_s" in pred.timings


@pytest.mark.xfail(strict=True, reason="known limitation: the strain fit starts from axis-aligned strains "
                                       "only; a stretch along rotated axes of a cubic block is not found "
                                       "(six shear starts found it in part: Rwp 0.027, not shipped)")
def test_fit_strain_finds_a_stretch_along_axes_the_structure_is_not_aligned_with(calc):
    """The same bcc block stretched along rotated axes: the strain has off-diagonal parts in the
    structure's frame (which the axis-aligned cases cannot test), and the fit should recover its
    principal values."""
    from scipy.spatial.transform import Rotation

    ideal = _shape("BCC_h_4_k_4_l_5")
    rot = Rotation.from_euler("zyx", [0.4, 0.7, 0.2]).as_matrix()
    stretch = np.array([1.024, 1.0, 0.977])
    truth = ideal @ rot @ np.diag(stretch) @ rot.T
    pdf, grid, g, fit, start = _fitted(calc, truth, ideal)
    s = fit_strain(grid, fit, start, g)
    assert np.abs(s.strain - np.diag(np.diag(s.strain))).max() > 0.005     # off-diagonal parts found
    want = np.log(stretch)
    assert s.rwp < 0.01 and np.allclose(_deviatoric(s.strain), np.sort(want - want.mean()), atol=0.002), \
        (s.rwp, _deviatoric(s.strain))
