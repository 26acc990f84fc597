"""Kernel matrix <-> coordinates."""
import numpy as np
import pytest

from cbldm.runtime.kernel import (KERNEL_WIDTH, count_atoms, from_blocks, kernel_matrix,
                                  to_blocks)
from cbldm.runtime.recovery import kabsch_rmsd, misfit, recover_xyz
from cbldm.training.clusters import TYPES, unit_shapes


def test_blocks_roundtrip_and_padding(rng):
    x = rng.normal(size=(200, 3)) * 5
    w = kernel_matrix(x)
    assert w.shape == (256, 256) and np.all(w[200:] == 0) and np.allclose(np.diag(w)[:200], 1)
    b = to_blocks(w)
    assert b.shape == (4, 128, 128)
    np.testing.assert_array_equal(from_blocks(b), w)
    np.testing.assert_array_equal(b[1], w[:128, 128:])
    with pytest.raises(ValueError, match="capacity"):
        kernel_matrix(rng.normal(size=(257, 3)))


def test_atom_count_with_noise(rng):
    x = unit_shapes("Icosahedron")[2].xyz_unit * 2.8  # 147 atoms
    w = kernel_matrix(x) + rng.normal(0, 0.02, (256, 256))
    assert count_atoms(w) == 147
    assert count_atoms(kernel_matrix(x[:5])) == 5


def test_gradient_matches_finite_differences(rng):
    x = rng.normal(size=(12, 3)) * 3
    w = kernel_matrix(rng.normal(size=(12, 3)) * 3, pad=None)
    f, g = misfit(x.ravel(), w, KERNEL_WIDTH)
    eps = 1e-6
    num = np.array([(misfit(x.ravel() + eps * e, w, KERNEL_WIDTH)[0]
                     - misfit(x.ravel() - eps * e, w, KERNEL_WIDTH)[0]) / (2 * eps)
                    for e in np.eye(x.size)])
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)


def test_kabsch_handles_rotation_and_reflection(rng):
    x = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    mirrored = x @ q.T * np.array([1, 1, -1]) + 5
    assert kabsch_rmsd(mirrored, x) < 1e-12
    assert kabsch_rmsd(x @ q.T, x, allow_reflection=True) < 1e-12
    assert kabsch_rmsd(x * [1, 1, -1], x, allow_reflection=False) > 0.1


@pytest.mark.parametrize("kind", TYPES)
def test_exact_kernels_recover_all_types(kind):
    shapes = unit_shapes(kind)
    largest = max(range(len(shapes)), key=lambda i: shapes[i].n_atoms)
    for s in [shapes[i] for i in sorted({0, len(shapes) // 2, largest})]:
        x = s.xyz_unit * 2.75
        res = recover_xyz(kernel_matrix(x, pad=None))
        assert kabsch_rmsd(res.xyz, x) <= 0.01, (kind, s.n_atoms)


def test_paper_eigenmap_start_then_refinement():
    x = unit_shapes("Icosahedron")[2].xyz_unit * 2.75
    res = recover_xyz(kernel_matrix(x, pad=None), init="eigenmap")
    assert res.init == "eigenmap" and kabsch_rmsd(res.xyz, x) <= 0.01


def test_noisy_kernel_error_is_graceful(rng):
    x = unit_shapes("Decahedron")[10].xyz_unit * 2.75
    w = kernel_matrix(x, pad=None)
    noise = rng.normal(0, 3e-3, w.shape)
    res = recover_xyz(w + (noise + noise.T) / 2)
    assert kabsch_rmsd(res.xyz, x) < 0.1


def test_non_finite_kernels_are_refused_not_read_as_padding():
    """NaN used to become 0 ("no atom here", "atoms far apart"): a broken decode then came out
    as a one-atom structure."""
    w = np.eye(4)
    w[1, 2] = w[2, 1] = np.nan
    with pytest.raises(ValueError, match="2 non-finite entries"):
        count_atoms(w)
    with pytest.raises(ValueError, match="non-finite"):
        recover_xyz(w)
    w[1, 2] = w[2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        count_atoms(w)
