"""XCiT trunk: token grid for any input size, XCA normalisation, Fourier encoding, timm-named weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from glocal.models.checkpoints import CheckpointMismatchError
from glocal.models.layers.xcit import XCA, FourierPositionalEncoding, Xcit, XcitConfig, load_xcit_weights, xcit_preset

TINY = XcitConfig(embed_dim=48, depth=2, num_heads=4)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny() -> Xcit:
    torch.manual_seed(0)
    return Xcit(TINY).eval()


@pytest.mark.parametrize("size", [(48, 48), (50, 70), (112, 96), (17, 33), (64, 100)])
def test_token_grid_is_ceil_of_size_over_16(tiny: Xcit, size: tuple[int, int]) -> None:
    with torch.no_grad():
        tokens, grid = tiny(torch.randn(2, 3, *size))
    expected = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    assert grid == expected == Xcit.grid_size(*size)
    assert tokens.shape == (2, expected[0] * expected[1], TINY.embed_dim)
    assert bool(torch.isfinite(tokens).all())


def test_inputs_are_zero_padded_at_bottom_right(tiny: Xcit) -> None:
    """A 40 x 40 input is processed as its 48 x 48 zero-padding at the bottom / right (no shift)."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        tokens, grid = tiny(x)
        padded_tokens, _ = tiny(torch.nn.functional.pad(x, (0, 8, 0, 8)))
        shifted_tokens, _ = tiny(torch.nn.functional.pad(x, (8, 0, 8, 0)))
    assert grid == (3, 3)
    assert torch.allclose(tokens, padded_tokens, atol=1e-6)
    assert not torch.allclose(tokens, shifted_tokens, atol=1e-3)


def test_xca_attention_is_channel_by_channel_and_softmax_normalised() -> None:
    torch.manual_seed(0)
    xca = XCA(48, num_heads=4)
    attn, v = xca.attention(torch.randn(2, 30, 48))
    assert attn.shape == (2, 4, 12, 12) and v.shape == (2, 4, 12, 30)
    assert bool((attn >= 0).all())
    assert torch.allclose(attn.sum(-1), torch.ones(2, 4, 12), atol=1e-5)
    assert xca.temperature.shape == (4, 1, 1)
    assert xca(torch.randn(2, 30, 48)).shape == (2, 30, 48)


def test_xca_is_linear_in_tokens_and_scale_free() -> None:
    """q, k are L2-normalised along the tokens: scaling the input does not change the attention map."""
    torch.manual_seed(0)
    xca = XCA(16, num_heads=2)
    with torch.no_grad():
        xca.qkv.bias.zero_()
    x = torch.randn(1, 10, 16)
    assert torch.allclose(xca.attention(x)[0], xca.attention(3.0 * x)[0], atol=1e-5)


def test_fourier_features_follow_the_formula() -> None:
    pe = FourierPositionalEncoding(dim=8, hidden_dim=4, temperature=100.0)
    f = pe.features(3, 5, torch.device("cpu"))
    assert f.shape == (1, 8, 3, 5)
    y, x = 2, 4  # 0-based grid position -> 1-based (3, 5) / (extent + eps) * 2 pi
    uy, ux = 3 / (3 + 1e-6) * 2 * math.pi, 5 / (5 + 1e-6) * 2 * math.pi
    expected = []
    for u in (uy, ux):
        for k in range(2):
            a = u / 100.0 ** (2 * k / 4)
            expected += [math.sin(a), math.cos(a)]
    assert torch.allclose(f[0, :, y, x], torch.tensor(expected), atol=1e-5)
    assert pe(2, 3, 5).shape == (2, 8, 3, 5)


def test_presets_have_timm_names_and_shapes() -> None:
    """XCiT-S12/16 and S24/16 parameter names and shapes as in timm's ``xcit_small_{12,24}_p16``."""
    with torch.device("meta"):
        s12, s24 = Xcit(xcit_preset("s12")), Xcit(xcit_preset("S24"))
    shapes = {k: tuple(v.shape) for k, v in s12.state_dict().items()}
    assert shapes["patch_embed.proj.0.0.weight"] == (48, 3, 3, 3)
    assert shapes["patch_embed.proj.0.1.running_var"] == (48,)
    assert shapes["patch_embed.proj.6.0.weight"] == (384, 192, 3, 3)
    assert shapes["pos_embed.token_projection.weight"] == (384, 64, 1, 1)
    assert shapes["blocks.11.attn.qkv.weight"] == (1152, 384)
    assert shapes["blocks.11.attn.temperature"] == (8, 1, 1)
    assert shapes["blocks.11.attn.proj.weight"] == (384, 384)
    assert shapes["blocks.11.local_mp.conv1.weight"] == (384, 1, 3, 3)
    assert shapes["blocks.11.local_mp.bn.running_mean"] == (384,)
    assert shapes["blocks.11.mlp.fc1.weight"] == (1536, 384)
    for g in ("gamma1", "gamma2", "gamma3"):
        assert shapes[f"blocks.11.{g}"] == (384,)
    assert "blocks.12.gamma1" not in shapes and "blocks.23.gamma1" in s24.state_dict()
    assert xcit_preset("s24").layer_scale == 1e-5 and xcit_preset("s12").layer_scale == 1.0
    with pytest.raises(ValueError, match="unknown XCiT variant"):
        xcit_preset("b16")


def _timm_file(model: Xcit, path: Path, **edits: torch.Tensor | None) -> Path:
    """A timm-style checkpoint ({"model": state}) with the classification parts timm adds."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    c = model.config.embed_dim
    state |= {"cls_token": torch.zeros(1, 1, c), "cls_attn_blocks.0.attn.q.weight": torch.zeros(c, c),
              "norm.weight": torch.ones(c), "head.weight": torch.zeros(10, c)}
    for k, v in edits.items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    torch.save({"model": state}, path)
    return path


def test_load_timm_named_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Xcit(TINY)
    torch.manual_seed(1)
    target = Xcit(TINY)
    report = load_xcit_weights(target, _timm_file(source, tmp_path / "xcit_tiny.pth"))
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k
    assert report.source == "timm-xcit"
    assert set(report.ignored) == {"cls_token", "cls_attn_blocks.0.attn.q.weight", "norm.weight", "head.weight"}


def test_load_accepts_the_vitgal_release_spelling(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Xcit(TINY)
    state = {k.replace("pos_embed.", "pos_embeder."): v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "release.pth")
    target = Xcit(TINY)
    load_xcit_weights(target, tmp_path / "release.pth")
    assert torch.equal(target.pos_embed.token_projection.weight, source.pos_embed.token_projection.weight)


def test_misfit_checkpoint_lists_missing_unexpected_misshaped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Xcit(TINY)
    path = _timm_file(model, tmp_path / "bad_xcit.pth", **{
        "blocks.1.gamma2": None,
        "blocks.7.attn.qkv.weight": torch.zeros(144, 48),
        "blocks.0.attn.temperature": torch.ones(8, 1, 1),
    })
    with pytest.raises(CheckpointMismatchError) as info:
        load_xcit_weights(Xcit(TINY), path)
    err = info.value
    assert "bad_xcit.pth" in str(err)
    assert err.missing == ["blocks.1.gamma2"]
    assert err.unexpected == ["blocks.7.attn.qkv.weight"]
    assert len(err.misshaped) == 1 and err.misshaped[0].startswith("blocks.0.attn.temperature")
    assert "(8, 1, 1)" in err.misshaped[0] and "(4, 1, 1)" in err.misshaped[0]
