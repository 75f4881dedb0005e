"""Selectors, rules and the Regularizer built from them."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.groups import Channels, Filters, Matrix, Shapes
from shrinkage.optim import AllOf, ModuleType, NamePattern, Predicate, Regularizer, Rule
from shrinkage.penalties import L1, GroupLasso, NuclearNorm, SparseGroupLasso


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 4, 3),
            layer1=Block(4, 4),
            layer2=Block(4, 8),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(8, 10),
        )
    ).double()


def names(rule: Rule, model: nn.Module) -> list[str]:
    return [n for n, _ in rule.chosen(model)]


GL = GroupLasso(0.1)
CONVS = ["stem", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"]


# --------------------------------------------------------------- selectors


def test_module_type_selector():
    model = make_model()
    assert names(Rule(ModuleType((nn.Conv2d,)), Filters(), GL), model) == CONVS
    assert names(Rule(ModuleType((nn.Linear,)), Filters(), GL), model) == ["fc"]
    assert names(Rule(ModuleType((nn.Conv2d, nn.Linear)), Filters(), GL), model) == CONVS + ["fc"]
    assert names(Rule(ModuleType((Block,)), Filters(), GL), model) == ["layer1", "layer2"]


def test_module_type_matches_subclasses():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 2, 1), nn.Conv2d(2, 2, 1))
    assert names(Rule(ModuleType((nn.Conv2d,)), Filters(), GL), model) == ["0", "1"]
    assert names(Rule(ModuleType((MyConv,)), Filters(), GL), model) == ["0"]


@pytest.mark.parametrize("bad", [(), (int,), (nn.Conv2d, "Linear"), (nn.Conv2d(1, 1, 1),)])
def test_module_type_validation(bad):
    with pytest.raises(ConfigError, match=r"ModuleType\.types"):
        ModuleType(bad)


def test_name_pattern_selector():
    model = make_model()
    assert names(Rule(NamePattern("layer*.conv1"), Filters(), GL), model) == ["layer1.conv1", "layer2.conv1"]
    assert names(Rule(NamePattern("layer?.conv?"), Filters(), GL), model) == CONVS[1:]
    assert names(Rule(NamePattern("fc"), Filters(), GL), model) == ["fc"]
    assert names(Rule(NamePattern("layer2.*"), Filters(), GL), model) == ["layer2.conv1", "layer2.bn1", "layer2.conv2"]
    # the root module (empty name) is never matched by a pattern; matching is case-sensitive
    assert "" not in names(Rule(NamePattern("*"), Filters(), GL), model)
    assert names(Rule(NamePattern("*"), Filters(), GL), model)[0] == "stem"
    assert NamePattern("FC").matches("fc", nn.Linear(1, 1)) is False


def test_predicate_selector():
    model = make_model()
    wide = Predicate(lambda n, m: isinstance(m, nn.Conv2d) and m.out_channels == 8)
    assert names(Rule(wide, Filters(), GL), model) == ["layer2.conv1", "layer2.conv2"]
    no_bias = Predicate(lambda n, m: isinstance(m, nn.Conv2d) and m.bias is None)
    assert names(Rule(no_bias, Filters(), GL), model) == ["layer1.conv2", "layer2.conv2"]
    # truthy non-bool results count as a match
    assert Predicate(lambda n, m: 1).matches("x", nn.ReLU()) is True


def test_all_of_selector():
    model = make_model()
    sel = AllOf((ModuleType((nn.Conv2d,)), NamePattern("layer2.*")))
    assert names(Rule(sel, Filters(), GL), model) == ["layer2.conv1", "layer2.conv2"]
    sel3 = AllOf((ModuleType((nn.Conv2d,)), NamePattern("layer*"), Predicate(lambda n, m: n.endswith("2"))))
    assert names(Rule(sel3, Filters(), GL), model) == ["layer1.conv2", "layer2.conv2"]


def test_rule_exclude():
    model = make_model()
    rule = Rule(ModuleType((nn.Conv2d, nn.Linear)), Filters(), GL, exclude=NamePattern("fc"))
    assert names(rule, model) == CONVS
    rule = Rule(ModuleType((nn.Conv2d,)), Filters(), GL, exclude=AllOf((NamePattern("layer*"), NamePattern("*conv1"))))
    assert names(rule, model) == ["stem", "layer1.conv2", "layer2.conv2"]


def test_selector_strings():
    assert str(ModuleType((nn.Conv2d, nn.Linear))) == "type in (Conv2d, Linear)"
    assert str(NamePattern("layer*")) == "name ~ 'layer*'"

    def is_big(n, m):
        return True

    assert str(Predicate(is_big)) == "predicate is_big"
    assert str(AllOf((NamePattern("a"), NamePattern("b")))) == "name ~ 'a' and name ~ 'b'"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_rule_every_validation(bad):
    with pytest.raises(ConfigError, match=r"every"):
        Rule(ModuleType((nn.Conv2d,)), Filters(), GL, every=bad)


# --------------------------------------------------------------- regularizer construction


def test_rule_matching_nothing_raises_with_index():
    model = make_model()
    rules = [Rule(ModuleType((nn.Conv2d,)), Filters(), GL), Rule(NamePattern("head.*"), Filters(), GL)]
    with pytest.raises(ConfigError, match=r"rules\[1\]") as info:
        Regularizer(model, rules)
    assert "name ~ 'head.*'" in str(info.value)
    # excluding everything that was selected is "matches nothing" too
    rules = [Rule(ModuleType((nn.Linear,)), Filters(), GL, exclude=NamePattern("fc"))]
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        Regularizer(model, rules)


def test_terms_follow_rules_and_modules():
    model = make_model()
    rules = [
        Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(0.1), exclude=NamePattern("stem")),
        Rule(NamePattern("fc"), Matrix(), NuclearNorm(0.01), every=3),
    ]
    reg = Regularizer(model, rules)
    assert [(t.rule, t.grouping.label, t.every) for t in reg.terms] == [
        (0, "layer1.conv1", 1),
        (0, "layer1.conv2", 1),
        (0, "layer2.conv1", 1),
        (0, "layer2.conv2", 1),
        (1, "fc", 3),
    ]
    assert reg.terms[0].label.startswith("layer1.conv1:") and reg.terms[-1].label.startswith("fc:")
    assert reg.terms[2].grouping.parameters == (model.layer2.conv1.weight,)


def test_parameters_are_deduplicated():
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("fc"), Filters(include_bias=True), GroupLasso(0.1)),
            Rule(NamePattern("fc"), Channels(), GroupLasso(0.1)),
            Rule(NamePattern("fc"), Matrix(), NuclearNorm(0.1)),
        ],
    )
    assert len(reg.terms) == 3
    ps = reg.parameters
    assert len(ps) == 2 and ps[0] is model.fc.weight and ps[1] is model.fc.bias


# --------------------------------------------------------------- value


def _rows_norm_sum(m: torch.Tensor) -> torch.Tensor:
    return sum(torch.sqrt((r * r).sum()) for r in m)


def test_value_is_sum_of_penalties_by_hand():
    model = make_model()
    rules = [
        Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(0.1)),
        Rule(NamePattern("layer2.conv2"), Shapes(), GroupLasso(0.2, scale_by_size=True)),
        Rule(NamePattern("fc"), Channels(), SparseGroupLasso(0.3, alpha=0.25)),
        Rule(NamePattern("fc"), Matrix(), NuclearNorm(0.05)),
        Rule(NamePattern("layer1.conv1"), Filters(include_bias=True), L1(0.07)),
    ]
    reg = Regularizer(model, rules)
    want = torch.zeros((), dtype=torch.float64)
    for name in CONVS:
        w = model.get_submodule(name).weight.detach()
        want = want + 0.1 * sum(torch.sqrt((w[n] ** 2).sum()) for n in range(w.shape[0]))
    w = model.layer2.conv2.weight.detach()  # (8, 8, 3, 3): shapes have size N = 8
    shapes = [w[:, c, i, j] for c in range(8) for i in range(3) for j in range(3)]
    want = want + 0.2 * math.sqrt(8) * sum(torch.sqrt((s**2).sum()) for s in shapes)
    fw = model.fc.weight.detach()  # (10, 8); channels are columns of size 10
    cols = fw.t()
    want = want + 0.3 * (0.75 * math.sqrt(10) * _rows_norm_sum(cols) + 0.25 * fw.abs().sum())
    want = want + 0.05 * torch.linalg.svdvals(fw).sum()
    c = model.layer1.conv1
    want = want + 0.07 * (c.weight.detach().abs().sum() + c.bias.detach().abs().sum())
    got = reg.value()
    assert got.dim() == 0 and got.requires_grad
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)


def test_value_gradient_reaches_parameters():
    model = make_model()
    reg = Regularizer(model, [Rule(NamePattern("fc"), Filters(), GroupLasso(0.5))])
    reg.value().backward()
    w = model.fc.weight.detach()
    torch.testing.assert_close(model.fc.weight.grad, 0.5 * w / w.norm(dim=1, keepdim=True), rtol=1e-12, atol=0)
    assert model.fc.bias.grad is None and model.stem.weight.grad is None


# --------------------------------------------------------------- zero_small_groups_


def test_zero_small_groups():
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("fc"), Filters(), GroupLasso(0.1)),
            Rule(NamePattern("layer1.conv1"), Matrix(), NuclearNorm(0.1)),
        ],
    )
    fc = model.fc
    with torch.no_grad():
        fc.weight[1] = 0.0  # already zero: not counted
        fc.weight[2] = torch.tensor([3.0, 4.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64) / 1024  # norm 5/1024 exactly
        fc.weight[4].mul_(1e-6 / fc.weight[4].norm())  # norm 1e-6: below
        fc.weight[7] = 0.0
        fc.weight[7, 3] = -1e-4  # below
        model.layer1.conv1.weight[0].mul_(1e-9)  # tiny, but only under a nuclear-norm term
    before_fc = fc.weight.detach().clone()
    before_conv = model.layer1.conv1.weight.detach().clone()
    before_bias = fc.bias.detach().clone()

    t = 5 / 1024  # row 2 is exactly at the threshold: not below it, kept
    n = reg.zero_small_groups_(threshold=t)
    assert n == 2
    after = fc.weight.detach()
    assert torch.equal(after[[1, 4, 7]], torch.zeros(3, 8, dtype=after.dtype))
    keep = [0, 2, 3, 5, 6, 8, 9]
    assert torch.equal(after[keep], before_fc[keep])
    assert torch.equal(model.layer1.conv1.weight.detach(), before_conv)
    assert torch.equal(fc.bias.detach(), before_bias)
    # a second call finds nothing left to zero
    assert reg.zero_small_groups_(threshold=t) == 0
    # a larger threshold catches the group exactly at the old one
    assert reg.zero_small_groups_(threshold=t * (1 + 1e-9)) == 1
    assert torch.equal(after[2], torch.zeros(8, dtype=after.dtype))


def test_zero_small_groups_on_coupled_and_column_groups():
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("stem"), Filters(include_bias=True), GroupLasso(0.1)),
            Rule(NamePattern("layer1.conv2"), Shapes(), GroupLasso(0.1)),
        ],
    )
    stem, conv = model.stem, model.layer1.conv2
    with torch.no_grad():
        stem.weight[2].mul_(1e-8)
        stem.bias[2] = 1e-8  # filter 2 + its bias is tiny -> zeroed together
        stem.bias[3] = 0.0
        stem.weight[3].mul_(1e-8)
        stem.bias[3] = 5.0  # filter 3 weights tiny but bias large -> kept
        conv.weight[:, 1, 2, 0].mul_(1e-8)
    ws, bs, wc = stem.weight.detach().clone(), stem.bias.detach().clone(), conv.weight.detach().clone()
    assert reg.zero_small_groups_(1e-3) == 2
    assert (stem.weight.detach()[2] == 0).all() and stem.bias.detach()[2] == 0
    assert torch.equal(stem.weight.detach()[3], ws[3]) and stem.bias.detach()[3] == 5.0
    assert (conv.weight.detach()[:, 1, 2, 0] == 0).all()
    mask = torch.ones_like(wc, dtype=torch.bool)
    mask[:, 1, 2, 0] = False
    assert torch.equal(conv.weight.detach()[mask], wc[mask])
    keep = [0, 1, 3]
    assert torch.equal(stem.weight.detach()[keep], ws[keep]) and torch.equal(stem.bias.detach()[keep], bs[keep])


# --------------------------------------------------------------- structure


def test_structure_reports_zero_fractions_and_rank():
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("layer2.conv1"), Filters(), GroupLasso(0.1)),
            Rule(NamePattern("layer1.conv1"), Channels(), L1(0.1)),
            Rule(NamePattern("fc"), Matrix(), NuclearNorm(0.1)),
        ],
    )
    with torch.no_grad():
        model.layer2.conv1.weight[[0, 5, 6]] = 0.0  # 3 of 8 filters
        model.layer1.conv1.weight[:, 2] = 0.0  # 1 of 4 channels
        model.layer1.conv1.weight[0, 0, 0, 0] = 0.0
        u = torch.randn(10, 3, dtype=torch.float64)
        v = torch.randn(3, 8, dtype=torch.float64)
        model.fc.weight.copy_(u @ v)  # rank 3
    stats = reg.structure()
    gl, l1, nn_ = (t.label for t in reg.terms)
    assert set(stats) == {gl, l1, nn_}
    assert stats[gl] == {"zero_groups": 3 / 8}
    assert stats[l1]["zero_groups"] == 1 / 4
    assert stats[l1]["zero_weights"] == pytest.approx((4 * 9 + 1) / (4 * 4 * 9), rel=1e-6)
    assert stats[nn_] == {"rank": 3.0, "rank_fraction": 3 / 8}


def test_structure_keeps_one_entry_per_term():
    """Filters and channels of one layer under the same penalty type are two terms: the
    statistics of neither may overwrite the other's."""
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("fc"), Filters(), GroupLasso(0.1)),
            Rule(NamePattern("fc"), Channels(), GroupLasso(0.1)),
        ],
    )
    with torch.no_grad():
        model.fc.weight[:5] = 0.0  # 5 of 10 filters; 0 of 8 channels
    assert len({t.label for t in reg.terms}) == 2
    stats = reg.structure()
    assert len(stats) == 2
    assert stats[reg.terms[0].label] == {"zero_groups": 0.5}
    assert stats[reg.terms[1].label] == {"zero_groups": 0.0}


def test_regularizer_prox_uses_lr_and_every():
    model = make_model()
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("fc"), Filters(), GroupLasso(0.5)),
            Rule(NamePattern("stem"), Filters(), GroupLasso(0.5), every=2),
        ],
    )
    fc, stem = model.fc.weight, model.stem.weight
    step_of = {id(p): 0.1 for p in model.parameters()}
    n_fc, n_stem = fc.detach().norm(dim=1), stem.detach().reshape(4, -1).norm(dim=1)
    reg.prox_(step_of, 1)  # stem skipped on odd steps
    torch.testing.assert_close(fc.detach().norm(dim=1), (n_fc - 0.05).clamp_min(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stem.detach().reshape(4, -1).norm(dim=1), n_stem, rtol=0, atol=0)
    reg.prox_(step_of, 2)  # stem shrinks by 2 * lr * strength
    torch.testing.assert_close(
        stem.detach().reshape(4, -1).norm(dim=1), (n_stem - 0.1).clamp_min(0), rtol=1e-12, atol=1e-12
    )
