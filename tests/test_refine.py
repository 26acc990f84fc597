"""Real-space refinement of candidate structures against the PDF."""
import numpy as np
import pytest

from cbldm.runtime.pdf import DebyePDF, rwp
from cbldm.runtime.pipeline import NO_REFINEMENT, RefineConfig, predict
from cbldm.runtime.refine import PDFRefiner
from cbldm.runtime.sampling import SamplerConfig
from cbldm.training.clusters import sorted_distances, unit_shapes


def _cluster(kind="Decahedron", atoms=80, d=2.77):
    x = next(s for s in unit_shapes(kind) if s.n_atoms >= atoms).xyz_unit * d
    return x - x.mean(axis=0)


def test_objective_is_the_pipelines_rwp_and_gradient_is_exact(calc, rng):
    x = _cluster() + rng.normal(0, 0.1, (len(_cluster()), 3))
    g_obs = calc.calc(_cluster(), "Pt")
    ref = PDFRefiner(calc, stride=1)  # the calculator's own 1e-3 A bins: identical numbers
    value, grad = ref.loss(x.ravel(), g_obs, float(g_obs @ g_obs))
    assert np.sqrt(value) == pytest.approx(rwp(g_obs, calc.calc(x, "Pt", method="histogram")), rel=1e-10)
    eps = 1e-6
    for k in rng.choice(x.size, 12, replace=False):
        e = np.zeros(x.size)
        e[k] = eps
        num = (ref.loss(x.ravel() + e, g_obs, float(g_obs @ g_obs))[0]
               - ref.loss(x.ravel() - e, g_obs, float(g_obs @ g_obs))[0]) / (2 * eps)
        assert grad[k] == pytest.approx(num, rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("kind,atoms", [("Decahedron", 100), ("Icosahedron", 147), ("FCC", 60)])
def test_refinement_moves_perturbed_atoms_back(calc, rng, kind, atoms):
    truth = _cluster(kind, atoms)
    start = truth + rng.normal(0, 0.1, truth.shape)
    g_obs = calc.calc(truth, "Pt")
    res = PDFRefiner(calc).refine(start, g_obs)
    assert res.rwp_start > 0.3 and res.rwp < 0.1, (res.rwp_start, res.rwp)
    # the PDF fit is not bought with a wrong structure: pair distances approach the truth
    err = lambda x: np.mean(np.abs(sorted_distances(x) - sorted_distances(truth)))  # noqa: E731
    assert err(res.xyz) < 0.5 * err(start)
    assert rwp(g_obs, calc.calc(res.xyz, "Pt")) == pytest.approx(res.rwp, abs=2e-3)


def test_clashing_atoms_are_pushed_apart(calc, rng):
    truth = _cluster("Icosahedron", 55)
    start = truth + rng.normal(0, 0.05, truth.shape)
    start[1] = start[0] + np.array([0.5, 0.0, 0.0])  # two atoms 0.5 A apart
    g_obs = calc.calc(truth, "Pt")
    ref = PDFRefiner(calc)
    gg = float(g_obs @ g_obs)
    value, grad = ref.loss(start.ravel(), g_obs, gg, min_distance=2.2)
    eps = 1e-6
    for k in (0, 1, 3, 4):  # the two clashing atoms' x and y
        e = np.zeros(start.size)
        e[k] = eps
        num = (ref.loss(start.ravel() + e, g_obs, gg, 2.2)[0]
               - ref.loss(start.ravel() - e, g_obs, gg, 2.2)[0]) / (2 * eps)
        assert grad[k] == pytest.approx(num, rel=1e-3, abs=1e-7)
    res = ref.refine(start, g_obs, min_distance=2.2, max_shift=None)
    from scipy.spatial.distance import pdist
    assert pdist(start).min() < 0.6 and pdist(res.xyz).min() > 2.0


def test_refinement_respects_the_shift_box_and_never_worsens(calc, rng):
    truth = _cluster()
    start = truth + rng.normal(0, 0.3, truth.shape)
    g_obs = calc.calc(truth, "Pt")
    res = PDFRefiner(calc).refine(start, g_obs, maxiter=30, max_shift=0.05)
    # the result is centred: its offset from the centred start is the shift minus its mean,
    # so at most twice the box
    moved = res.xyz - (start - start.mean(axis=0))
    assert 0.02 < np.abs(moved).max() <= 0.1 + 1e-9
    assert res.rwp <= res.rwp_start
    flat = PDFRefiner(calc).refine(start, np.zeros_like(g_obs))  # no data: nothing to fit
    assert flat.iterations == 0 and np.array_equal(flat.xyz, start)


def test_pipeline_refines_the_best_candidates_only(fake_model, calc):
    """Networks that decode three perturbed copies of a known decahedron, against its exact
    PDF: the best one after the physics fit must be refined, and only that one. (With a
    trained model nothing guarantees any candidate gets refined, and a check over the refined
    ones passed with none; here the count is asserted first.)"""
    from scipy.spatial.distance import pdist

    from cbldm.runtime.pdf import PDFParams
    from cbldm.runtime.pipeline import PDFInput
    from cbldm.runtime.preprocess import D_REF, nn_distance

    truth = _cluster("Decahedron", 51, d=2.77)  # the first with >= 51 atoms: 80
    g = calc.calc(truth, "Pt")
    pdf = PDFInput.on_model_grid(g, "Pt")
    frame = truth * D_REF / float(nn_distance(g))  # what networks would decode for this PDF
    m = fake_model(frame, noise=0.1 * D_REF / 2.77)
    sampler = SamplerConfig(**m.manifest["sampler"])
    plain = predict(m, pdf, sampler, candidates=3, seed=1, refine=NO_REFINEMENT, source="model")
    assert len(plain.candidates) == 3 and all(c.n_atoms == len(truth) for c in plain.candidates)
    assert not any(c.refined for c in plain.candidates)
    ref = predict(m, pdf, sampler, candidates=3, seed=1, refine=RefineConfig(top=1, search=0), source="model")
    refined = [c for c in ref.candidates if c.refined]
    assert len(refined) == 1, [(c.rwp, c.rwp_rigid) for c in ref.candidates]

    # ranking: physical structures (no pair inside 0.9 of the first shell) first, then Rwp
    dmin = 0.9 * float(nn_distance(g))
    phys = [c for c in ref.candidates if pdist(c.xyz).min() >= 0.99 * dmin]
    assert ref.best is min(phys or ref.candidates, key=lambda c: c.rwp)

    c = refined[0]
    start = next(x for x in plain.candidates if x.label == c.label)  # the same structure, unrefined
    assert c.shift_rms > 0 and c.exact
    # Rwp before refinement: the exact calculator's (the answer), or the fit's binned model (others)
    assert c.rwp_rigid == pytest.approx(start.rwp_rigid, abs=0.02 if not start.exact else 1e-9)
    # perturbed by 0.1 A from the truth, against the truth's own PDF: the fit must improve a lot
    assert c.rwp < 0.5 * c.rwp_rigid, (c.rwp, c.rwp_rigid)
    # the reported Rwp is the exact calculator's, for the returned coordinates and fitted physics
    assert c is ref.best
    f, ph = c.fit, ref.physics
    # DiffPy's calculation with the fitted physics on the fit's Q grid (where DiffPy cuts at
    # Qmin and Qmax), the fitted Biso per atom
    exact = DebyePDF(PDFParams(rmax=ph.rmax + ph.rstep, qmin=ph.qmin, qmax=ph.qmax, biso=max(ref.q_grid_biso, f.biso),
                               delta2=f.delta2, qdamp=f.qdamp)).calc(
        c.xyz, "Pt", uiso=np.full(c.n_atoms, f.biso / (8 * np.pi**2)))
    assert c.rwp == pytest.approx(rwp(ref.g_obs, exact[(exact.shape[0] - len(ref.r)):]), rel=1e-6)
    # and the untouched candidates are exactly what the unrefined run gave
    assert {x.label: x.n_atoms for x in ref.candidates if not x.refined} == \
        {x.label: x.n_atoms for x in plain.candidates if x is not start}


def test_detached_atoms_are_counted():
    from cbldm.runtime.pipeline import detached_atoms

    for kind in ("Icosahedron", "BCC", "SC", "Decahedron"):
        assert detached_atoms(_cluster(kind, 50)) == 0, kind
    x = _cluster("Icosahedron", 55).copy()
    far = int(np.argmax(np.linalg.norm(x, axis=1)))
    x[far] *= 1.8  # a surface atom pulled 4-5 A out
    x[0 if far else 1] += 40.0  # beyond the PDF's 30 A: the fit cannot see it
    assert detached_atoms(x) == 2


def test_the_answer_is_ranked_on_an_information_criterion_not_on_refined_rwp():
    """A refinement must pay for its free coordinates: a 207-atom structure bent from Rwp 0.16 to
    0.088 does not outrank a 56-atom one that fits at 0.095 as it is (0.093 refined), while a
    strained particle whose refinement takes Rwp from 0.27 to 0.024 does outrank a rigid 0.10."""
    from cbldm.runtime.fitting import FilePhysics
    from dataclasses import replace
    from types import SimpleNamespace

    from cbldm.runtime.pipeline import Candidate, criterion, independent_points, justified

    n_ind = independent_points(FilePhysics(qmin=0.7, qmax=25.0, rmin=1.5, rmax=30.0))
    assert n_ind == pytest.approx(28.5 * 24.3 / np.pi)

    def cand(n, rigid, refined=None):
        return Candidate(np.zeros((n, 3)), "library", f"{n}", rwp=refined or rigid, rwp_rigid=rigid,
                         refined=refined is not None)

    bent, near = cand(207, 0.159, 0.088), cand(56, 0.095, 0.093)
    assert bent.rwp < near.rwp and criterion(near, n_ind) < criterion(bent, n_ind)
    strained, other = cand(216, 0.27, 0.024), cand(240, 0.10)
    assert criterion(strained, n_ind) < criterion(other, n_ind)
    # unrefined candidates: the criterion orders them as Rwp does
    assert criterion(cand(50, 0.05), n_ind) < criterion(cand(20, 0.06), n_ind)
    # a refinement that does not pay is undone: the structure and fit before it are reported
    start = np.random.default_rng(0).normal(size=(56, 3))
    undone = justified(replace(near, start_xyz=start, start_fit=None), n_ind)
    assert undone.refined    # nothing to go back to: kept as it is
    fit0 = SimpleNamespace(g_calc=np.zeros(3))
    undone = justified(replace(near, start_xyz=start, start_fit=fit0), n_ind)
    assert not undone.refined and undone.xyz is start and undone.rwp == 0.095
    assert undone.rwp_refined_unjustified == 0.093 and undone.fit is fit0
    kept = justified(replace(strained, start_xyz=start, start_fit=fit0), n_ind)
    assert kept.refined and kept.rwp == 0.024
    # a start with atoms on top of each other has no rigid fit to fall back on
    clashed = replace(bent, start_clashed=True, rwp=0.15, rwp_rigid=0.05)
    assert criterion(clashed, n_ind) > criterion(cand(207, 0.08), n_ind)
    assert justified(replace(clashed, start_xyz=start, start_fit=fit0), n_ind).refined


def test_a_structure_that_needs_qdamp_at_its_bound_ranks_after_one_that_does_not(tmp_path):
    """A twinned 117-atom particle of the held-out families (training physics, Qdamp 0): a
    409-atom decahedron fits it best on Rwp only under the strongest damping allowed (Qdamp
    0.08), an 84-atom fcc sphere a little worse with Qdamp inside the range. The decahedron is
    too large for the data and must not be the answer; alone, the verdict says why."""
    from cbldm.models import default_model_dir
    from cbldm.runtime.library import Library, write_library
    from cbldm.runtime.pipeline import PDFInput, overdamped
    from cbldm.training.heldout import build

    twin = next(it for it in build() if it.name == "hf_lamellar_twin_gap3_r2.7")
    calc = DebyePDF(twin.params)
    pdf = PDFInput(calc.r, calc.calc(twin.xyz, twin.element), twin.element, name=twin.name)  # Qdamp refined
    shipped = Library(default_model_dir() / "library.npz")
    pick = {n: i for i, n in enumerate(shipped.names)}

    def library(names):
        path = tmp_path / f"{len(names)}.npz"
        write_library(path, [(n, shipped.motif[pick[n]], "extended", shipped.xyz(pick[n])) for n in names], log=None)
        return Library(path)

    lib = library(["ext:decahedron_p6_q4_r0", "common:fcc_sphere_c1_n84"])
    pred = predict(None, pdf, SamplerConfig(), 0, source="library", library=lib, refine=NO_REFINEMENT)
    big = next(c for c in pred.candidates if c.n_atoms == 409)
    assert overdamped(big) and big.rwp < pred.best.rwp       # the better Rwp, at the bound
    assert pred.best.n_atoms == 84 and not overdamped(pred.best)
    # the verdict names the better fit once, for what it is
    said = [w for w in pred.verdict.warnings if "409 atoms" in w]
    assert len(said) == 1 and "only with Qdamp at its bound" in said[0], pred.verdict.warnings
    alone = predict(None, pdf, SamplerConfig(), 0, source="library", library=library(["ext:decahedron_p6_q4_r0"]),
                    refine=NO_REFINEMENT)
    assert alone.best.n_atoms == 409 and alone.verdict.verdict == "doubtful"
    assert any("strongest instrumental damping" in w for w in alone.verdict.warnings)


def test_a_kernel_cut_at_the_structure_s_reach_refines_to_the_same_coordinates(rng):
    """``PDFRefiner.for_fit(..., reach)``: data to 60 A, a 3 nm particle; the kernel stops at its
    longest pair plus the box. Same refinement, number for number, on a fraction of the memory."""
    from dataclasses import replace

    from cbldm.runtime.fitting import FilePhysics, fit_grid
    from cbldm.runtime.pdf import PDFParams
    from cbldm.runtime.structure import diameter

    truth = _cluster("Decahedron", 100)
    start = truth + rng.normal(0, 0.08, truth.shape)
    grid = fit_grid(FilePhysics(0.7, 25.0, 1.5, 60.0))
    g = np.interp(grid.r_fit, *(lambda c: (c.r, c.calc(truth, "Pt")))(DebyePDF(PDFParams(rmax=60.01))))
    fit = replace(grid.fit(truth, g), delta2=1.0)      # delta2 also varies along the kernel's rows
    reach = diameter(start) + 2 * np.sqrt(3) * 1.0
    full, cut = PDFRefiner.for_fit(grid, fit), PDFRefiner.for_fit(grid, fit, reach)
    assert len(cut.K) < len(full.K) / 2
    a = full.refine(start, g, maxiter=40, max_shift=1.0, bond=2.77)
    b = cut.refine(start, g, maxiter=40, max_shift=1.0, bond=2.77)
    assert a.iterations == b.iterations and a.rwp == b.rwp
    np.testing.assert_array_equal(a.xyz, b.xyz)
