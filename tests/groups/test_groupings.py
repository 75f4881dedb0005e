"""Groupings (gather / scatter_) and the SSL group kinds, checked against explicit indexing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkage.errors import ShrinkageError, UnsupportedModuleError
from shrinkage.groups import (
    AxisGrouping,
    Channels,
    ColumnGrouping,
    Depth,
    Filters,
    FlatGrouping,
    Matrix,
    Shapes,
    SliceGrouping,
)


def _param(*shape, seed=0, dtype=torch.float64) -> nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))


# --------------------------------------------------------------- expected layouts (explicit)


def axis0_rows(w):
    return torch.stack([w[n].reshape(-1) for n in range(w.shape[0])])


def axis1_rows(w):
    return torch.stack([w[:, c].reshape(-1) for c in range(w.shape[1])])


def column_rows(w):
    n, c, kh, kw = w.shape
    rows = [None] * (c * kh * kw)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                rows[ci * kh * kw + i * kw + j] = w[:, ci, i, j]
    return torch.stack(rows)


# --------------------------------------------------------------- helpers for every grouping


def _check_round_trip(grouping, owned_mask_of, seed=1):
    """gather -> modify -> scatter_ writes exactly the modified matrix into the owned entries
    and leaves every other entry untouched; gather afterwards returns the new matrix."""
    params = grouping.parameters
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        m = grouping.gather()
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(m.shape, generator=g, dtype=m.dtype) + 10.0  # values never present before
    grouping.scatter_(new)
    for p in params:
        assert p.is_leaf and p.requires_grad and p.grad_fn is None
    with torch.no_grad():
        assert torch.equal(grouping.gather(), new)
    for p, b in zip(params, before):
        owned = owned_mask_of(p)
        assert torch.equal(p.detach()[~owned], b[~owned])  # nothing else touched
        assert (p.detach()[owned] >= 5.0).all()  # every owned entry rewritten
    # scatter of an unmodified gather is the identity
    snapshot = [p.detach().clone() for p in params]
    with torch.no_grad():
        grouping.scatter_(grouping.gather())
    for p, s in zip(params, snapshot):
        assert torch.equal(p.detach(), s)


def _check_in_place_then_scatter(grouping):
    """Regularizer.prox_ modifies the gathered matrix in place (it may alias the parameter)
    and then scatters it: the result must be exactly the modified matrix."""
    with torch.no_grad():
        m = grouping.gather()
        want = m.clone() * -3.0
        m.mul_(-3.0)
        grouping.scatter_(m)
        assert torch.equal(grouping.gather(), want)


def _check_gather_gradient(grouping, expected_grads):
    """d/dp sum(C * gather()) puts C exactly at the entries each group owns, zero elsewhere."""
    for p in grouping.parameters:
        p.grad = None
    m = grouping.gather()
    assert m.requires_grad
    g = torch.Generator().manual_seed(3)
    c = torch.randn(m.shape, generator=g, dtype=m.dtype)
    (m * c).sum().backward()
    for p, want in zip(grouping.parameters, expected_grads(c)):
        assert torch.equal(p.grad, want)


def _all(p):
    return torch.ones_like(p, dtype=torch.bool)


# --------------------------------------------------------------- AxisGrouping


def test_axis_grouping_dim0_conv_weight():
    w = _param(4, 3, 2, 5)
    g = AxisGrouping("conv", w, 0)
    assert g.label == "conv" and g.parameters == (w,)
    m = g.gather()
    assert m.shape == (4, 30) and g.shape == (4, 30)
    assert torch.equal(m, axis0_rows(w.detach()))
    _check_gather_gradient(g, lambda c: [c.reshape(4, 3, 2, 5)])
    _check_round_trip(g, _all)
    _check_in_place_then_scatter(g)


def test_axis_grouping_dim1_conv_weight():
    w = _param(4, 3, 2, 5)
    g = AxisGrouping("conv", w, 1)
    m = g.gather()
    assert m.shape == (3, 40)
    assert torch.equal(m, axis1_rows(w.detach()))

    def grads(c):
        out = torch.zeros_like(w)
        for ch in range(3):
            out[:, ch] = c[ch].reshape(4, 2, 5)
        return [out]

    _check_gather_gradient(g, grads)
    _check_round_trip(g, _all)
    _check_in_place_then_scatter(g)


def test_axis_grouping_scatter_writes_intended_entries():
    w = _param(4, 3, 2, 2)
    g = AxisGrouping("conv", w, 1)
    with torch.no_grad():
        m = g.gather().clone()
    m[2] = 0.0  # zero input channel 2 only
    before = w.detach().clone()
    g.scatter_(m)
    assert torch.equal(w.detach()[:, 2], torch.zeros(4, 2, 2, dtype=w.dtype))
    assert torch.equal(w.detach()[:, [0, 1]], before[:, [0, 1]])


@pytest.mark.parametrize("dim", [-1, -2, 2])
def test_axis_grouping_other_and_negative_dims(dim):
    w = _param(4, 3, 5)
    g = AxisGrouping("x", w, dim)
    d = dim % 3
    m = g.gather()
    assert torch.equal(m, torch.stack([w.detach().select(d, i).reshape(-1) for i in range(w.shape[d])]))
    _check_round_trip(g, _all)
    _check_in_place_then_scatter(g)


def test_axis_grouping_on_1d_parameter():
    b = _param(5)
    g = AxisGrouping("bias", b, 0)
    assert torch.equal(g.gather(), b.detach().reshape(5, 1))
    _check_round_trip(g, _all)


# --------------------------------------------------------------- ColumnGrouping


def test_column_grouping_rows_are_filter_shapes():
    w = _param(5, 3, 2, 4)
    g = ColumnGrouping("conv", w)
    m = g.gather()
    assert m.shape == (3 * 2 * 4, 5)
    assert torch.equal(m, column_rows(w.detach()))
    # spot checks of the documented order c*kh*kw + i*kw + j
    assert torch.equal(m[1 * 8 + 1 * 4 + 3], w.detach()[:, 1, 1, 3])
    assert torch.equal(m[2 * 8 + 0 * 4 + 2], w.detach()[:, 2, 0, 2])

    def grads(c):
        out = torch.zeros_like(w)
        for ci in range(3):
            for i in range(2):
                for j in range(4):
                    out[:, ci, i, j] = c[ci * 8 + i * 4 + j]
        return [out]

    _check_gather_gradient(g, grads)
    _check_round_trip(g, _all)
    _check_in_place_then_scatter(g)


def test_column_grouping_zeroing_one_shape():
    w = _param(5, 3, 2, 4)
    g = ColumnGrouping("conv", w)
    with torch.no_grad():
        m = g.gather().clone()
    m[1 * 8 + 0 * 4 + 3] = 0
    before = w.detach().clone()
    g.scatter_(m)
    assert torch.equal(w.detach()[:, 1, 0, 3], torch.zeros(5, dtype=w.dtype))
    mask = torch.ones_like(before, dtype=torch.bool)
    mask[:, 1, 0, 3] = False
    assert torch.equal(w.detach()[mask], before[mask])


def test_column_grouping_rejects_1d():
    with pytest.raises(ValueError, match="bias"):
        ColumnGrouping("bias", _param(4))


# --------------------------------------------------------------- FlatGrouping


def test_flat_grouping_several_tensors():
    a, b, c = _param(3, 2, seed=1), _param(4, seed=2), _param(2, 1, 2, 2, seed=3)
    g = FlatGrouping("block", (a, b, c))
    assert g.parameters == (a, b, c)
    m = g.gather()
    assert m.shape == (1, 6 + 4 + 8)
    assert torch.equal(m[0], torch.cat([a.detach().reshape(-1), b.detach().reshape(-1), c.detach().reshape(-1)]))
    _check_gather_gradient(
        g, lambda cc: [cc[0, :6].reshape(3, 2), cc[0, 6:10].reshape(4), cc[0, 10:].reshape(2, 1, 2, 2)]
    )
    _check_round_trip(g, _all)
    _check_in_place_then_scatter(g)


def test_flat_grouping_needs_a_parameter():
    with pytest.raises(ValueError, match="blk"):
        FlatGrouping("blk", ())


# --------------------------------------------------------------- SliceGrouping


def _slice_setup():
    w = _param(7, 4, seed=1)  # rows; row 6 belongs to no group
    b = _param(7, seed=2)
    w2 = _param(5, 8, seed=3)  # columns; columns 6, 7 belong to no group
    idx = torch.tensor([[0, 3], [1, 4], [2, 5]])  # k = 2 non-contiguous positions per group
    idx2 = torch.tensor([[5, 0], [1, 2], [4, 3]])
    g = SliceGrouping("coupled", ((w, 0, idx), (b, 0, idx), (w2, 1, idx2)))
    return g, w, b, w2, idx, idx2


def _slice_expected(w, b, w2, idx, idx2):
    rows = []
    for gi in range(idx.shape[0]):
        parts = [w[idx[gi, 0]], w[idx[gi, 1]], b[idx[gi]], w2[:, idx2[gi, 0]], w2[:, idx2[gi, 1]]]
        rows.append(torch.cat([p.reshape(-1) for p in parts]))
    return torch.stack(rows)


def test_slice_grouping_gather_content():
    g, w, b, w2, idx, idx2 = _slice_setup()
    assert g.n_groups == 3 and g.parameters == (w, b, w2)
    m = g.gather()
    assert m.shape == (3, 2 * 4 + 2 + 2 * 5)
    assert torch.equal(m, _slice_expected(w.detach(), b.detach(), w2.detach(), idx, idx2))


def test_slice_grouping_round_trip_and_untouched_entries():
    g, w, b, w2, idx, idx2 = _slice_setup()

    def owned(p):
        mask = torch.zeros_like(p, dtype=torch.bool)
        if p is w:
            mask[:6] = True
        elif p is b:
            mask[:6] = True
        else:
            mask[:, :6] = True
        return mask

    _check_round_trip(g, owned)
    _check_in_place_then_scatter(g)


def test_slice_grouping_zeroing_one_group_touches_exactly_its_slices():
    g, w, b, w2, idx, idx2 = _slice_setup()
    before = [p.detach().clone() for p in (w, b, w2)]
    with torch.no_grad():
        m = g.gather().clone()
    m[1] = 0  # group 1 = rows 1, 4 of w, entries 1, 4 of b, columns 1, 2 of w2
    g.scatter_(m)
    wz, bz, w2z = (p.detach() for p in (w, b, w2))
    assert torch.equal(wz[[1, 4]], torch.zeros(2, 4, dtype=wz.dtype))
    assert torch.equal(bz[[1, 4]], torch.zeros(2, dtype=bz.dtype))
    assert torch.equal(w2z[:, [1, 2]], torch.zeros(5, 2, dtype=w2z.dtype))
    keep_w = [0, 2, 3, 5, 6]
    assert torch.equal(wz[keep_w], before[0][keep_w])
    assert torch.equal(bz[keep_w], before[1][keep_w])
    keep_c = [0, 3, 4, 5, 6, 7]
    assert torch.equal(w2z[:, keep_c], before[2][:, keep_c])


def test_slice_grouping_gradient():
    g, w, b, w2, idx, idx2 = _slice_setup()

    def grads(c):
        gw, gb, gw2 = torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(w2)
        for gi in range(3):
            gw[idx[gi, 0]] = c[gi, 0:4]
            gw[idx[gi, 1]] = c[gi, 4:8]
            gb[idx[gi, 0]] = c[gi, 8]
            gb[idx[gi, 1]] = c[gi, 9]
            gw2[:, idx2[gi, 0]] = c[gi, 10:15]
            gw2[:, idx2[gi, 1]] = c[gi, 15:20]
        return [gw, gb, gw2]

    _check_gather_gradient(g, grads)


def test_slice_grouping_negative_dim():
    w2 = _param(5, 8)
    idx = torch.tensor([[0, 7], [3, 4]])
    g = SliceGrouping("neg", ((w2, -1, idx),))
    m = g.gather()
    assert torch.equal(m[1], torch.cat([w2.detach()[:, 3], w2.detach()[:, 4]]))

    def owned(p):
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[:, [0, 3, 4, 7]] = True
        return mask

    _check_round_trip(g, owned)


def test_slice_grouping_validation():
    w = _param(4, 2)
    with pytest.raises(ValueError, match="coupled"):
        SliceGrouping("coupled", ())
    with pytest.raises(ValueError, match="disagree"):
        SliceGrouping("coupled", ((w, 0, torch.tensor([[0], [1]])), (w, 1, torch.tensor([[0], [1], [0]]))))


# --------------------------------------------------------------- group kinds


def test_filters_conv2d():
    conv = nn.Conv2d(3, 5, (2, 3)).double()
    (g,) = Filters().build("features.0", conv)
    assert isinstance(g, AxisGrouping) and g.label == "features.0" and g.parameters == (conv.weight,)
    assert torch.equal(g.gather(), axis0_rows(conv.weight.detach()))
    assert g.shape == (5, 18)


def test_filters_conv2d_with_bias():
    conv = nn.Conv2d(3, 5, (2, 3)).double()
    (g,) = Filters(include_bias=True).build("c", conv)
    assert g.parameters == (conv.weight, conv.bias)
    m = g.gather()
    assert m.shape == (5, 19)
    want = torch.cat([axis0_rows(conv.weight.detach()), conv.bias.detach().reshape(5, 1)], dim=1)
    assert torch.equal(m, want)
    # zeroing group 3 zeroes filter 3 and its bias only
    with torch.no_grad():
        mm = m.detach().clone()
    mm[3] = 0
    wb, bb = conv.weight.detach().clone(), conv.bias.detach().clone()
    g.scatter_(mm)
    assert torch.equal(conv.weight.detach()[3], torch.zeros(3, 2, 3, dtype=torch.float64))
    assert conv.bias.detach()[3] == 0
    keep = [0, 1, 2, 4]
    assert torch.equal(conv.weight.detach()[keep], wb[keep]) and torch.equal(conv.bias.detach()[keep], bb[keep])


def test_filters_include_bias_without_bias():
    conv = nn.Conv2d(3, 5, 3, bias=False)
    (g,) = Filters(include_bias=True).build("c", conv)
    assert g.parameters == (conv.weight,) and g.shape == (5, 27)


def test_filters_linear_rows_with_and_without_bias():
    lin = nn.Linear(6, 4).double()
    (g,) = Filters().build("fc", lin)
    assert torch.equal(g.gather(), lin.weight.detach())
    (gb,) = Filters(include_bias=True).build("fc", lin)
    assert torch.equal(gb.gather(), torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], dim=1))


def test_channels_conv2d_and_linear():
    conv = nn.Conv2d(3, 5, 2).double()
    (g,) = Channels().build("c", conv)
    assert g.shape == (3, 20) and torch.equal(g.gather(), axis1_rows(conv.weight.detach()))
    lin = nn.Linear(6, 4).double()
    (gl,) = Channels().build("fc", lin)
    assert torch.equal(gl.gather(), lin.weight.detach().t())
    _check_round_trip(gl, _all)


@pytest.mark.parametrize(
    "module",
    [nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, groups=4), nn.Conv1d(4, 6, 3, groups=2), nn.Conv3d(4, 4, 1, groups=4)],
    ids=["conv2d_g2", "depthwise2d", "conv1d_g2", "depthwise3d"],
)
def test_channels_of_grouped_conv_rejected(module):
    with pytest.raises(UnsupportedModuleError, match="'blk.dw'"):
        Channels().build("blk.dw", module)


def test_shapes_conv2d_conv1d_conv3d():
    conv = nn.Conv2d(3, 5, (2, 3)).double()
    (g,) = Shapes().build("c", conv)
    assert isinstance(g, ColumnGrouping)
    assert torch.equal(g.gather(), column_rows(conv.weight.detach()))
    c1 = nn.Conv1d(2, 4, 3)
    (g1,) = Shapes().build("c1", c1)
    assert g1.shape == (6, 4) and torch.equal(g1.gather()[4], c1.weight.detach()[:, 1, 1])
    c3 = nn.Conv3d(2, 4, (1, 2, 3))
    (g3,) = Shapes().build("c3", c3)
    assert g3.shape == (12, 4) and torch.equal(g3.gather()[1 * 6 + 0 * 3 + 2], c3.weight.detach()[:, 1, 0, 0, 2])


def test_depth_groups_the_trainable_weights_and_shifts_on_request():
    block = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    (g,) = Depth().build("layer1", block)
    assert isinstance(g, FlatGrouping)
    assert g.parameters == (block[0].weight, block[1].weight)  # no conv bias, no BatchNorm shift
    assert g.shape == (1, block[0].weight.numel() + 3)
    (everything,) = Depth(include_shifts=True).build("layer1", block)
    assert everything.parameters == tuple(block.parameters())
    block[1].bias.requires_grad_(False)
    (g2,) = Depth(include_shifts=True).build("layer1", block)
    assert g2.parameters == (block[0].weight, block[0].bias, block[1].weight)
    only_bias = nn.Linear(2, 2)
    only_bias.weight.requires_grad_(False)
    with pytest.raises(UnsupportedModuleError, match="'fc'"):
        Depth().build("fc", only_bias)


def test_depth_without_parameters_rejected():
    with pytest.raises(UnsupportedModuleError, match="'act'"):
        Depth().build("act", nn.ReLU())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(UnsupportedModuleError, match="'frozen'"):
        Depth().build("frozen", frozen)


def test_matrix_conv_and_linear():
    conv = nn.Conv2d(3, 5, 2).double()
    (g,) = Matrix().build("c", conv)
    assert torch.equal(g.gather(), conv.weight.detach().reshape(5, 12))
    lin = nn.Linear(6, 4).double()
    (gl,) = Matrix().build("fc", lin)
    assert torch.equal(gl.gather(), lin.weight.detach())


@pytest.mark.parametrize(
    "kind, module, type_name",
    [
        (Shapes(), nn.Linear(3, 2), "Linear"),
        (Filters(), nn.BatchNorm2d(3), "BatchNorm2d"),
        (Filters(include_bias=True), nn.BatchNorm1d(3), "BatchNorm1d"),
        (Channels(), nn.LayerNorm(3), "LayerNorm"),
        (Matrix(), nn.Embedding(4, 3), "Embedding"),
        (Matrix(), nn.ConvTranspose2d(3, 2, 2), "ConvTranspose2d"),
        (Filters(), nn.ConvTranspose2d(3, 2, 2), "ConvTranspose2d"),
        (Shapes(), nn.ConvTranspose1d(3, 2, 2), "ConvTranspose1d"),
    ],
)
def test_unsupported_modules_raise_naming_the_module(kind, module, type_name):
    with pytest.raises(UnsupportedModuleError) as info:
        kind.build("net.block.odd", module)
    msg = str(info.value)
    assert "'net.block.odd'" in msg and type_name in msg and "\n" not in msg
    assert isinstance(info.value, ShrinkageError) and isinstance(info.value, TypeError)


def test_kinds_are_value_objects():
    assert Filters() == Filters() and Filters(include_bias=True) != Filters()
    assert len({Filters(), Filters(), Channels(), Shapes(), Depth(), Matrix()}) == 5
    with pytest.raises(Exception):
        Filters().include_bias = True  # frozen


def test_prox_on_channels_of_a_single_input_channel_conv() -> None:
    """The gathered matrix is a view of the weight; writing it back must not fail or copy twice."""
    from shrinkage.groups import Channels, Filters, Shapes
    from shrinkage.penalties import GroupLasso

    conv = nn.Conv2d(1, 4, 3)
    for kind in (Channels(), Filters(), Shapes()):
        (g,) = kind.build("conv", conv)
        m = g.gather().detach()
        GroupLasso(1e3).prox_(m, 1.0)
        g.scatter_(m)
        assert torch.count_nonzero(conv.weight) == 0
        with torch.no_grad():
            conv.weight.normal_()
