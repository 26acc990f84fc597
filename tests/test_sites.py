"""The lattice-site structure representation (cbldm.training.sites): templates closed under
their point groups, every recipe shape placed exactly, a loss blind to the orientation the
network answers in, and a network that learns on a few drawn structures."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cbldm.training.clusters import TYPES, unit_shapes  # noqa: E402
from cbldm.training.sites import KINDS, RECIPE_KIND, decode, site_loss, site_net, template  # noqa: E402


@pytest.mark.parametrize("kind", KINDS)
def test_templates_are_closed_under_their_point_group(kind):
    t = template(kind)
    n = len(t.sites)
    assert t.perms.shape[1] == n and t.perms.shape[0] == {"fcc": 48, "bcc": 48, "sc": 48, "hcp": 12,
                                                          "dec": 20, "ico": 120}[kind]
    # each operation is a permutation of the sites, and the identity is one of them
    assert all(len(np.unique(p)) == n for p in t.perms)
    assert any(np.array_equal(p, np.arange(n)) for p in t.perms)
    # lattices: nearest neighbours one bond apart (unit-bond frame); the shell templates hold
    # the sites of particles centred a half layer apart (decahedra of odd and even height)
    d = np.linalg.norm(t.sites[1:] - t.sites[0], axis=1)
    if kind in ("fcc", "hcp", "bcc", "sc"):
        assert d.min() == pytest.approx(1.0, abs=1e-6)
    else:
        assert d.min() > 0.45


@pytest.mark.parametrize("recipe_type", TYPES)
def test_every_recipe_shape_lands_on_its_template(recipe_type):
    shapes = unit_shapes(recipe_type)
    t = template(RECIPE_KIND[recipe_type])
    rng = np.random.default_rng(0)
    for s in shapes:
        x = s.xyz_unit * rng.uniform(2.3, 3.2) + rng.normal(size=3)    # any bond length, any place
        occ, placed = t.map(x)
        if s.label() == "HCP_Size1_1_Size2_8_Size3_15":   # one corner atom beyond the hcp template
            assert len(occ) == s.n_atoms - 1
            continue
        assert placed == 1.0 and len(occ) == s.n_atoms, s.label()
    # a copy turned by an operation of the group maps to the permuted occupancy
    s = shapes[len(shapes) // 2]
    occ, _ = t.map(s.xyz_unit)
    o = len(t.perms) // 2 + 1
    rot_occ, _ = t.map(t.sites[t.perms[o][occ]])
    assert set(rot_occ.tolist()) == set(t.perms[o][occ].tolist())


def test_the_loss_does_not_care_which_equivalent_orientation_is_the_target():
    torch.manual_seed(0)
    net = site_net(hidden=32)
    x = torch.randn(3, 6, 500)
    kind = torch.tensor([KINDS.index("fcc"), KINDS.index("dec"), KINDS.index("fcc")])
    t_fcc, t_dec = template("fcc"), template("dec")
    occ = [np.arange(13), np.arange(20), np.arange(40)]
    turned = [t_fcc.perms[7][occ[0]], t_dec.perms[3][occ[1]], t_fcc.perms[30][occ[2]]]
    a, _ = site_loss(net, x, kind, occ)
    b, _ = site_loss(net, x, kind, turned)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # but it does care about which sites
    c, _ = site_loss(net, x, kind, [np.arange(1, 14), np.arange(20), np.arange(40)])
    assert c.item() != pytest.approx(a.item(), rel=1e-6)


def test_a_few_hundred_steps_teach_it_one_shape():
    """Not a measure of generalisation (docs/networks.md has that): the parts fit together,
    gradients flow and decoding returns the taught structure."""
    from cbldm.training.sites import network_input
    from cbldm.training.torchpdf import TorchPDF

    torch.manual_seed(0)
    s = next(s for s in unit_shapes("Octahedron") if s.n_atoms == 19)
    occ, _ = template("fcc").map(s.xyz_unit)
    g = TorchPDF()(torch.from_numpy((s.xyz_unit * 2.7)[None].astype(np.float32)), torch.tensor([s.n_atoms]))
    x = network_input(g.numpy())
    net = site_net(hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        loss, _ = site_loss(net, x, torch.tensor([KINDS.index("fcc")]), [occ])
        opt.zero_grad()
        loss.backward()
        opt.step()
    (kind, sites), = decode(net, x)[0]
    assert kind == "fcc" and len(sites) == 19
    from cbldm.training.variants import shape_key

    assert shape_key(sites) == shape_key(s.xyz_unit)
