"""Packed layout (several whole sets per row, block-diagonal attention) == padded layout, exactly set attention."""

from __future__ import annotations

import pytest
import torch

from sciDiT.models.attention import SetAttention, pack_sets
from sciDiT.models.dit import DiT


def random_mask(bsz: int, n_min: int, n_max: int, seed: int, width: int = 29) -> torch.Tensor:
    """``[B, width]`` prefix mask of set sizes drawn from n_min..n_max (QM9 molecules: 3-29 atoms with H; MP-20: 1-20)."""
    sizes = torch.randint(n_min, n_max + 1, (bsz,), generator=torch.Generator().manual_seed(seed))
    return torch.arange(width)[None, :] < sizes[:, None]


def randomised_dit(**kwargs) -> DiT:
    """A DiT-S-wide DiT whose zero-initialised (adaLN-Zero) weights are made random, so every path matters."""
    torch.manual_seed(0)
    model = DiT(latent_dim=8, hidden_size=384, depth=2, num_heads=6, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def test_pack_sets_places_each_real_token_once_and_keeps_sets_whole() -> None:
    mask = random_mask(100, 1, 29, seed=0)
    mask[7] = False  # an empty set packs to nothing
    mask[7, 0] = True
    packing = pack_sets(mask, length=64)
    rows, length = packing.index.shape
    assert length == 64
    real = packing.segment >= 0
    assert torch.equal(torch.sort(packing.index[real]).values, mask.flatten().nonzero().squeeze(1))  # each real token exactly once
    assert torch.equal(packing.segment[real], packing.index[real] // mask.shape[1])  # segment = the token's own set
    for b in range(mask.shape[0]):
        assert (packing.segment == b).any(dim=1).sum() == 1  # a set never straddles rows
    assert rows * length < 1.1 * int(mask.sum()) + length  # first-fit decreasing leaves under 10% + one row empty
    x = torch.randn(*mask.shape, 5)
    torch.testing.assert_close(packing.unpack(packing.pack(x), mask), x * mask[..., None], rtol=0, atol=0)


def test_packed_attention_equals_padded_attention() -> None:
    torch.manual_seed(0)
    attn = SetAttention(384, 6).eval()
    mask = random_mask(64, 3, 29, seed=1)  # real sizes, 47% padding in the padded layout
    x = torch.randn(*mask.shape, 384)
    packing = pack_sets(mask, length=64)
    with torch.no_grad():
        padded = attn(x, mask) * mask[..., None]  # [B, N, D]
        packed = packing.unpack(attn(packing.pack(x), packing.attn_mask), mask)  # [B, N, D]
    assert packing.index.numel() < 0.7 * mask.numel()  # the packed layout really is smaller
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-5)


@pytest.fixture
def float64_default():
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("pack_length", [32, 96])
def test_packed_dit_equals_padded_dit_forward_and_gradients(pack_length: int, float64_default) -> None:
    """In float64: rows longer than the CPU's plain-softmax limit take the fused kernel, padded rows the
    plain one, and the two must agree to rounding."""
    torch.set_default_dtype(torch.float64)  # reset by the fixture below
    padded_model = randomised_dit()
    packed_model = randomised_dit(attention_layout="packed", pack_length=pack_length)
    packed_model.load_state_dict(padded_model.state_dict())
    mask = torch.cat([random_mask(24, 3, 29, seed=2), random_mask(24, 1, 20, seed=3)])  # a joint QM9 + MP-20 batch
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(*mask.shape, 8, generator=gen, dtype=torch.float64) * mask[..., None]
    t = torch.rand(48, generator=gen, dtype=torch.float64)
    cond = {"domain": torch.arange(48) % 2}
    self_cond = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    outs, grads = [], []
    for model in (padded_model, packed_model):
        out = model(x, t, mask, cond, x_self_cond=self_cond)
        (out**2).sum().backward()
        outs.append(out.detach())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert outs[0].abs().max() > 0.1 and torch.all(outs[1][~mask] == 0)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-10)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_packed_dit_is_permutation_equivariant() -> None:
    model = randomised_dit(attention_layout="packed", pack_length=48)
    mask = random_mask(16, 3, 20, seed=5, width=20)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(*mask.shape, 8, generator=gen) * mask[..., None]
    t = torch.rand(16, generator=gen)
    cond = {"domain": torch.arange(16) % 2}
    # permute the tokens inside every set (padding stays at the end) and the order of the sets
    perm = torch.stack([torch.cat([torch.randperm(int(n), generator=gen), torch.arange(int(n), mask.shape[1])]) for n in mask.sum(1)])
    sets = torch.randperm(16, generator=gen)
    permute = lambda a: torch.gather(a, 1, perm.view(*perm.shape, *[1] * (a.dim() - 2)).expand_as(a))[sets]  # noqa: E731
    with torch.no_grad():
        out = model(x, t, mask, cond)
        out_perm = model(permute(x), t[sets], permute(mask), {"domain": cond["domain"][sets]})
    torch.testing.assert_close(out_perm, permute(out), rtol=1e-4, atol=1e-5)


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="attention_layout"):
        DiT(latent_dim=4, hidden_size=32, depth=1, num_heads=2, attention_layout="jagged")
