"""FIRe eq. 7-9 and HOW eq. 2 losses: hand-built examples and a short synthetic training run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from glocal.train.fire_losses import (
    FireLossConfig,
    attention_decorrelation_loss,
    contrastive_terms,
    fire_tuple_loss,
    global_contrastive_loss,
    select_super_feature_pairs,
    super_feature_loss,
)


def _eq7_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Five Super-features per image, each ID testing one clause of eq. 7 (see the comments)."""
    query = torch.tensor([
        [1.0, 0.0, 0.0],    # 0
        [0.0, 1.0, 0.0],    # 1
        [0.0, 0.8, 0.6],    # 2
        [0.0, 0.0, -1.0],   # 3
        [-1.0, 0.0, 0.0],   # 4
    ])
    positive = torch.tensor([
        [0.98, 0.05, 0.0],   # 0: reciprocal, same ID, clear ratio -> eligible
        [0.0, 0.905, 0.29],  # 1: reciprocal with query 1, but almost as close to query 2 (ratio 0.93 > 0.9)
        [0.4, 0.6, 0.7],     # 2: nearest query is 2, but query 2's nearest positive is 1 (not reciprocal)
        [-0.95, 0.05, 0.0],  # 3: reciprocal with query 4: different ID
        [0.05, 0.0, -0.95],  # 4: reciprocal with query 3: different ID
    ])
    return query, positive


def _pairs(t: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in t.tolist()}


def test_eq7_selects_exactly_the_admitted_pairs() -> None:
    q, p = _eq7_example()
    assert _pairs(select_super_feature_pairs(q, p)) == {(0, 0)}
    # each constraint removed lets exactly its own counter-example through (paper Table 5 ablation)
    assert _pairs(select_super_feature_pairs(q, p, ratio_test=False)) == {(0, 0), (1, 1)}
    assert _pairs(select_super_feature_pairs(q, p, reciprocal=False)) == {(0, 0), (2, 2)}
    assert _pairs(select_super_feature_pairs(q, p, same_id=False)) == {(0, 0), (4, 3), (3, 4)}
    assert _pairs(select_super_feature_pairs(q, p, ratio_threshold=0.95)) == {(0, 0), (1, 1)}


def test_eq8_value_on_the_hand_built_pairs() -> None:
    torch.manual_seed(0)
    q, p = _eq7_example()
    negs = torch.randn(2, 5, 3)
    loss = super_feature_loss(q, p, negs, margin=1.1)
    qn, pn, nn_ = (torch.nn.functional.normalize(t, dim=-1) for t in (q, p, negs))
    expected = (qn[0] - pn[0]).pow(2).sum() + sum(
        torch.clamp(1.1 - (qn[0] - nn_[k, 0]).pow(2).sum(), min=0) for k in range(2))
    assert torch.allclose(loss, expected)
    # no eligible pair: zero, still attached to the graph
    q2 = q.clone().requires_grad_(True)
    zero = super_feature_loss(q2, -q2.detach(), negs, pairs=torch.zeros(0, 2, dtype=torch.long))
    zero.backward()
    assert float(zero.detach()) == 0.0 and q2.grad is not None


def test_contrastive_forms() -> None:
    a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[[0.6, 0.8]]])
    d_pos, d_neg = 2.0, (0.4**2 + 0.8**2)
    assert torch.isclose(contrastive_terms(a, p, n, 1.1), torch.tensor(d_pos + (1.1 - d_neg)))
    expected = 0.5 * d_pos + 0.5 * (1.1 - d_neg**0.5) ** 2
    assert torch.isclose(contrastive_terms(a, p, n, 1.1, form="cirtorch"), torch.tensor(expected))
    with pytest.raises(ValueError, match="form"):
        contrastive_terms(a, p, n, 1.0, form="other")  # type: ignore[arg-type]


def test_how_global_loss_eq2() -> None:
    g = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1)
    loss = global_contrastive_loss(g, margin=0.8)
    expected = (g[0] - g[1]).pow(2).sum() + sum(torch.clamp(0.8 - (g[0] - g[j]).pow(2).sum(), min=0) for j in (2, 3))
    assert torch.isclose(loss, expected)
    assert float(global_contrastive_loss(torch.stack([g[0], g[0], g[2]]), margin=0.8)) == 0.0


def test_eq9_zero_for_disjoint_one_for_identical() -> None:
    disjoint = torch.eye(6)[:4].reshape(4, 2, 3)          # 4 maps on different cells of a 2x3 grid
    assert float(attention_decorrelation_loss(disjoint, batched=False)) == pytest.approx(0.0)
    identical = torch.rand(1, 2, 3).expand(4, 2, 3)
    assert float(attention_decorrelation_loss(identical, batched=False)) == pytest.approx(1.0)
    # random maps: the mean of the off-diagonal cosines; batches are summed (or averaged)
    torch.manual_seed(0)
    maps = torch.rand(2, 5, 7)
    unit = torch.nn.functional.normalize(maps, dim=-1)
    per_image = [(unit[b] @ unit[b].T).fill_diagonal_(0).sum() / 20 for b in range(2)]
    assert torch.isclose(attention_decorrelation_loss(maps), per_image[0] + per_image[1])
    assert torch.isclose(attention_decorrelation_loss(maps, reduction="mean"), (per_image[0] + per_image[1]) / 2)


def test_tuple_loss_weights() -> None:
    q, p = _eq7_example()
    descriptors = torch.stack([q, p, torch.randn(5, 3)])
    attention = torch.eye(6)[:5].reshape(1, 5, 2, 3).expand(3, 5, 2, 3)
    losses = fire_tuple_loss(descriptors, attention)
    assert losses.num_pairs == 1 and float(losses.attention_loss) == pytest.approx(0.0)
    assert torch.isclose(losses.total, 0.02 * losses.super_loss)
    same = fire_tuple_loss(descriptors, torch.ones(3, 5, 2, 3), FireLossConfig(super_weight=0.0))
    assert float(same.total) == pytest.approx(0.1 * 3)


def test_short_training_lowers_both_losses() -> None:
    """A tiny FIRe (conv trunk, N = 8, T = 2, d = 32) trained on synthetic tuples (the positive is a
    shifted, noisy copy of the query; negatives are other random images)."""
    from glocal.models.fire import FireNet
    from glocal.models.layers.lit import LitConfig

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4, padding=2), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=4, padding=1), nn.ReLU())
    net = FireNet(trunk, LitConfig(num_templates=8, iterations=2, input_dim=32, dim=32), output_dim=16)
    gen = torch.Generator().manual_seed(1)
    tuples = []
    for _ in range(3):
        base = torch.randn(3, 64, 64, generator=gen)
        pos = torch.roll(base, shifts=(2, 3), dims=(1, 2)) + 0.1 * torch.randn(3, 64, 64, generator=gen)
        tuples.append(torch.stack([base, pos, torch.randn(3, 64, 64, generator=gen), torch.randn(3, 64, 64, generator=gen)]))
    with torch.no_grad():
        net.whiten.fit(torch.cat([net.super_features(x).raw.flatten(0, 1) for x in tuples]))
    frozen = {k: v.clone() for k, v in net.whiten.state_dict().items()}
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        optimiser.zero_grad()
        l_super = l_attn = 0.0
        for x in tuples:
            out = net.super_features(x)
            losses = fire_tuple_loss(out.descriptors, out.attention)
            losses.total.backward()
            l_super += losses.super_loss.item()
            l_attn += losses.attention_loss.item()
        optimiser.step()
        history.append((l_super, l_attn))
    assert history[-1][0] < 0.5 * history[0][0], history
    assert history[-1][1] < 0.8 * history[0][1], history
    assert all(torch.equal(v, net.whiten.state_dict()[k]) for k, v in frozen.items())  # o(.) stays frozen
