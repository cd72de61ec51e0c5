"""The latent DiT: set symmetry, padding, adaLN-Zero, guidance batching, determinism, learning; and the EMA."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sciDiT.flow import flow_matching_loss, guided_velocity, sample
from sciDiT.models.dit import DIT_SIZES, DiT, dit
from sciDiT.training.ema import EMA

LATENT = 4
CONDITIONS = {
    "domain": {"kind": "class", "num_classes": 3},
    "properties": {"kind": "vector", "dim": 2},
    "perturbation": {"kind": "token_set", "num_tokens": 11},
}


def randomised(model: DiT, seed: int = 0) -> DiT:
    """Perturb every weight (the adaLN-Zero init makes the output identically zero, hiding bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_model(**kwargs) -> DiT:
    kwargs = {"latent_dim": LATENT, "conditions": CONDITIONS, "class_dropout_prob": 0.1, **kwargs}
    return randomised(dit("DiT-T", **kwargs))


def make_inputs(bsz: int = 3, n: int = 7, seed: int = 1) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(n)[None, :] < torch.tensor([n, n - 2, 3][:bsz])[:, None]  # [B, N], padding present
    x = torch.randn(bsz, n, LATENT, generator=gen)
    t = torch.rand(bsz, generator=gen)
    cond = {
        "domain": torch.tensor([0, 1, 2][:bsz]),
        "properties": torch.randn(bsz, 2, generator=gen),
        "perturbation": torch.randint(0, 11, (bsz, 2), generator=gen),
        "perturbation_mask": torch.tensor([[True, True], [True, False], [False, False]][:bsz]),
    }
    return x, t, mask, cond


def test_size_registry_and_constructor_kwargs():
    assert {"DiT-T", "DiT-XS", "DiT-S", "DiT-B", "DiT-L"} <= set(DIT_SIZES)
    assert DIT_SIZES["DiT-S"] == {"depth": 12, "hidden_size": 384, "num_heads": 6}
    assert DIT_SIZES["DiT-L"] == {"depth": 24, "hidden_size": 1024, "num_heads": 16}
    model = dit("DiT-T", latent_dim=LATENT, conditions={})
    assert len(model.blocks) == 4 and model.x_embedder.out_features == 128
    with pytest.raises(ValueError, match="unknown DiT size"):
        dit("DiT-XXL")
    with pytest.raises(ValueError, match="unknown kind"):
        DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2, conditions={"x": {"kind": "image"}})
    with pytest.raises(ValueError, match="bad spec"):
        DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2, conditions={"x": {"kind": "class"}})


def test_adaln_zero_init_gives_zero_output():
    model = dit("DiT-T", latent_dim=LATENT, conditions=CONDITIONS)
    x, t, mask, cond = make_inputs()
    out = model(x, t, mask, cond)
    assert out.shape == x.shape and torch.all(out == 0)


def test_permutation_equivariance_with_padding():
    model = make_model()
    x, t, mask, cond = make_inputs()
    out = model(x, t, mask, cond)
    assert out.abs().sum() > 0
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(2))  # mixes real and padded slots
    out_perm = model(x[:, perm], t, mask[:, perm], cond)
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)


def test_padding_changes_nothing_and_outputs_zero_at_padding():
    model = make_model()
    x, t, mask, cond = make_inputs()
    out = model(x, t, mask, cond)
    assert torch.all(out[~mask] == 0)
    # extra padding slots filled with garbage: real outputs unchanged
    x_pad = torch.cat([x, 100 * torch.randn(x.shape[0], 5, LATENT)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(x.shape[0], 5, dtype=torch.bool)], dim=1)
    out_pad = model(x_pad, t, mask_pad, cond)
    torch.testing.assert_close(out_pad[:, : x.shape[1]], out, atol=1e-5, rtol=1e-5)
    # a set evaluated alone equals its row in the padded batch
    n2 = int(mask[2].sum())
    alone = model(x[2:3, :n2], t[2:3], mask[2:3, :n2], {k: v[2:3] for k, v in cond.items()})
    torch.testing.assert_close(alone[0], out[2, :n2], atol=1e-5, rtol=1e-5)


def _saved_bytes_and_grads(model: DiT, x, t, mask, cond) -> tuple[int, Tensor, list[Tensor]]:
    """Bytes autograd keeps for the backward pass, the output, and the parameter gradients of one training step."""
    saved = []
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        out = model(x, t, mask, cond, drop_cond=torch.zeros(x.shape[0], dtype=torch.bool))  # no random label dropout
    out.square().sum().backward()
    return sum(saved), out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_activation_checkpointing_keeps_outputs_and_gradients_and_saves_activations():
    x, t, mask, cond = make_inputs(n=40)
    plain, recomputed = make_model().train(), make_model(activation_checkpointing=True).train()
    recomputed.load_state_dict(plain.state_dict())
    bytes_plain, out_plain, grads_plain = _saved_bytes_and_grads(plain, x, t, mask, cond)
    bytes_ckpt, out_ckpt, grads_ckpt = _saved_bytes_and_grads(recomputed, x, t, mask, cond)
    torch.testing.assert_close(out_ckpt, out_plain)
    assert len(grads_ckpt) == len(grads_plain)
    for g_ckpt, g_plain in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(g_ckpt, g_plain)
    assert bytes_ckpt < 0.5 * bytes_plain  # 4 blocks: only their inputs are kept


def test_conditions_matter_and_dropped_or_absent_means_null():
    model = make_model()
    x, t, mask, cond = make_inputs()
    out = model(x, t, mask, cond)
    other = dict(cond, domain=torch.tensor([1, 2, 0]))
    assert not torch.allclose(model(x, t, mask, other), out)
    dropped = model(x, t, mask, cond, drop_cond=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(model(x, t, mask, {}), dropped)
    # the self-conditioning input is used
    assert not torch.allclose(model(x, t, mask, cond, x_self_cond=torch.ones_like(x)), out)


def test_a_condition_can_be_nulled_per_sample():
    model = make_model()
    x, t, mask, cond = make_inputs()
    out = model(x, t, mask, dict(cond, domain_null=torch.tensor([True, False, False])))
    absent = model(x, t, mask, {k: v for k, v in cond.items() if k != "domain"})
    torch.testing.assert_close(out[0], absent[0])
    torch.testing.assert_close(out[1:], model(x, t, mask, cond)[1:])


def test_new_zeroed_conditions_leave_a_trained_model_unchanged_and_are_learnt():
    """Conditions added to a trained DiT (``dit.init_ckpt`` with more conditions) start as zero contributions
    (MatterGen-style adapters): the same function for any value, and their zeroed layers get gradients."""
    base = make_model(conditions={"domain": CONDITIONS["domain"]})
    more = {**CONDITIONS, "group": {"kind": "class", "num_classes": 5}}
    extended = dit("DiT-T", latent_dim=LATENT, conditions=more, class_dropout_prob=0.0)
    missing, unexpected = extended.load_state_dict(base.state_dict(), strict=False)
    new = ["properties", "perturbation", "group"]
    assert not unexpected and missing and all(k.startswith(tuple(f"cond_embedders.{n}." for n in new)) for k in missing)
    extended.zero_conditions(new)
    x, t, mask, cond = make_inputs()
    cond = dict(cond, group=torch.tensor([4, 0, 2]))
    expected = base(x, t, mask, {"domain": cond["domain"]})
    torch.testing.assert_close(extended.eval()(x, t, mask, cond), expected)
    torch.testing.assert_close(extended(x, t, mask, {"domain": cond["domain"]}), expected)
    extended.train()(x, t, mask, cond).square().sum().backward()
    for name in ("properties", "perturbation"):
        assert extended.cond_embedders[name].mlp[-1].weight.grad.abs().sum() > 0
    assert extended.cond_embedders["group"].embedding_table.weight.grad[[4, 0, 2]].abs().sum() > 0


def test_label_dropout_only_in_training():
    model = make_model(class_dropout_prob=0.5)
    x, t, mask, cond = make_inputs()
    evals = [model(x, t, mask, cond) for _ in range(2)]
    torch.testing.assert_close(evals[0], evals[1])
    model.train()
    torch.manual_seed(0)
    trains = [model(x, t, mask, cond) for _ in range(8)]
    assert any(not torch.allclose(a, trains[0]) for a in trains[1:])


def test_cfg_single_batched_forward_equals_two_passes():
    model = make_model()
    x, t, mask, cond = make_inputs()
    sc = torch.randn_like(x)
    v_c = model(x, t, mask, cond, x_self_cond=sc)
    v_u = model(x, t, mask, cond, x_self_cond=sc, drop_cond=torch.ones(3, dtype=torch.bool))
    guided = guided_velocity(model, x, t, mask, cond, scale=2.5, x_self_cond=sc)
    torch.testing.assert_close(guided, v_u + 2.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)


def test_shared_token_table_is_used_not_copied():
    table = nn.Embedding(11, 16)
    model = DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2, conditions=CONDITIONS, shared_embeddings={"perturbation": table})
    assert model.cond_embedders["perturbation"].table is table
    with pytest.raises(ValueError, match="undeclared"):
        DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2, conditions={}, shared_embeddings={"perturbation": table})


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampling_is_deterministic_under_a_seeded_generator(method):
    model = make_model()
    _, _, mask, cond = make_inputs()
    kw = {"steps": 4, "method": method, "cfg_scale": 2.0, "self_condition": True}
    a = sample(model, mask, LATENT, cond, generator=torch.Generator().manual_seed(7), **kw)
    b = sample(model, mask, LATENT, cond, generator=torch.Generator().manual_seed(7), **kw)
    c = sample(model, mask, LATENT, cond, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all() and torch.all(a[~mask] == 0)


def test_bf16_autocast_forward_and_loss():
    model = make_model()
    x, t, mask, cond = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, mask, cond)
        loss = flow_matching_loss(model.train(), x, mask, cond, self_condition_prob=1.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), model.eval()(x, t, mask, cond), atol=0.1, rtol=0.05)
    loss.backward()
    assert torch.isfinite(loss)


def test_a_few_steps_reduce_the_loss_on_a_toy_problem():
    """Two point clouds told apart only by the domain label: the conditional flow must be learnt."""
    torch.manual_seed(0)
    model = DiT(latent_dim=2, hidden_size=64, depth=2, num_heads=4, conditions={"domain": {"kind": "class", "num_classes": 3}})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    domain = torch.arange(32) % 2
    x1 = torch.where(domain[:, None, None] == 0, 2.0, -2.0) + 0.1 * torch.randn(32, 5, 2, generator=gen)
    mask = torch.ones(32, 5, dtype=torch.bool)
    mask[::3, 3:] = False

    def loss_at_fixed_noise() -> float:
        model.eval()
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return float(flow_matching_loss(model, x1, mask, {"domain": domain}, generator=g))

    before = loss_at_fixed_noise()
    model.train()
    for _ in range(60):
        opt.zero_grad()
        flow_matching_loss(model, x1, mask, {"domain": domain}, self_condition_prob=0.5, generator=gen).backward()
        opt.step()
    after = loss_at_fixed_noise()
    assert after < 0.5 * before


def test_ema_tracks_weights_swaps_and_checkpoints():
    model = DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2)
    ema = EMA(model, decay=0.9, warmup=False)
    assert not any(p.requires_grad for p in ema.module.parameters())
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, s in zip(ema.module.parameters(), start):
        torch.testing.assert_close(e, s + 0.1)
    current = [p.detach().clone() for p in model.parameters()]
    with ema.swapped(model):
        for p, e in zip(model.parameters(), ema.module.parameters()):
            assert torch.equal(p, e)
    for p, c in zip(model.parameters(), current):
        assert torch.equal(p, c)
    restored = EMA(DiT(latent_dim=LATENT, hidden_size=32, depth=1, num_heads=2), decay=0.9, warmup=False)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.num_updates) == 1
    for a, b in zip(restored.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)
    assert EMA(model, decay=0.999).current_decay() == pytest.approx(0.1)
