"""Precision choice on both kinds of CPU, and what stays fp32 under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from sciDiT.errors import SciDiTInputError
from sciDiT.flow import flow_matching_loss
from sciDiT.models.dit import DiT
from sciDiT.sample import parse_args
from sciDiT.training import precision
from sciDiT.training.ema import EMA
from sciDiT.training.optim import adamw

AVX512_BF16 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 clzero\n"
AMX = "flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n"
AVX2_ONLY = "flags\t\t: fpu sse2 fma avx2 avx512f avx512bw avx_vnni f16c\n"  # no *_bf16 flag (avx512bw is not bf16)


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch):
    """Set the text the cpuinfo reader returns; the cached detection is cleared before and after."""

    def set_flags(text: str) -> None:
        monkeypatch.setattr(precision, "read_cpuinfo", lambda: text)
        precision.cpu_has_native_bf16.cache_clear()

    yield set_flags
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(("flags", "native"), [(AVX512_BF16, True), (AMX, True), (AVX2_ONLY, False), ("", False)])
def test_auto_precision_follows_the_cpu_flags(cpu_flags, flags: str, native: bool) -> None:
    cpu_flags(flags)
    assert precision.cpu_has_native_bf16() is native
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert precision.resolve_bf16("auto", "cpu") is native  # the sampling path makes the same choice
    assert precision.resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice is kept
    assert precision.resolve_bf16(False, "cpu") is False and precision.resolve_bf16(True, "cpu") is True


def test_resolve_bf16_rejects_other_words() -> None:
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto'"):
        precision.resolve_bf16("fast", "cpu")


def test_sample_cli_bf16_defaults_to_auto() -> None:
    base = ["ckpt=a.ckpt", "domain=molecule", "out=m.sdf"]
    assert parse_args(base)["bf16"] == "auto"
    assert parse_args([*base, "bf16=false"])["bf16"] is False and parse_args([*base, "bf16=AUTO"])["bf16"] == "auto"
    with pytest.raises(SciDiTInputError, match="bf16='fast'"):
        parse_args([*base, "bf16=fast"])


def test_loss_grads_ema_and_optimizer_state_stay_fp32_under_bf16_autocast() -> None:
    """One DiT training step inside Lightning's bf16-mixed context: only activations are bf16."""
    torch.manual_seed(0)
    model = DiT(latent_dim=4, hidden_size=32, depth=2, num_heads=2)
    ema = EMA(model, decay=0.9)
    opt = adamw(model.parameters(), lr=1e-3, weight_decay=0.01)
    x1 = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with MixedPrecision("bf16-mixed", "cpu").forward_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        out = model(x1, torch.rand(3), mask, {"domain": torch.tensor([0, 1, 0])})
        loss = flow_matching_loss(model.train(), x1, mask, {"domain": torch.tensor([0, 1, 0])}, self_condition_prob=1.0)
    assert out.dtype == torch.bfloat16  # the forward really ran in bf16
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    opt.step()
    ema.update(model)
    states = [s for s in opt.state.values()]
    assert states and {t.dtype for s in states for k, t in s.items() if k != "step"} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in ema.module.parameters()} == {torch.float32}


def test_cpu_attention_runs_in_fp32_under_bf16_autocast() -> None:
    """Autocast would run SDPA in bf16 (slow backward on CPU); sciDiT's attention computes it in fp32
    and hands back autocast's dtype, so it equals the fp32 attention of the same bf16 inputs."""
    import torch.nn.functional as F

    from sciDiT.models.attention import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, mask)
        autocast_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == autocast_out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    torch.testing.assert_close(out, reference.bfloat16())  # fp32 maths, rounded once
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    x = torch.randn(2, 4, 8)  # outside autocast, fp32 inputs give SDPA's fp32 result
    m = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    torch.testing.assert_close(attention(x[:, None], x[:, None], x[:, None], m), F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], attn_mask=m))


@pytest.mark.parametrize("n", [7, 19, 80])  # the plain softmax path (<= MATH_ATTENTION_MAX_TOKENS) and the fused kernel
def test_cpu_attention_kernels_agree_with_sdpa(n: int) -> None:
    """Whichever kernel the CPU takes for a set length, outputs and input gradients equal fused SDPA's,
    with key masks and with the packed layout's block-diagonal masks."""
    import torch.nn.functional as F

    from sciDiT.models.attention import attention

    torch.manual_seed(0)
    key_mask = torch.arange(n)[None, :] < torch.tensor([n, n // 2, 1])[:, None]  # [3, n]
    segment = torch.arange(n) * 3 // n  # three sets in one packed row
    for mask in (key_mask[:, None, None, :], (segment[:, None] == segment[None, :]).expand(3, n, n)[:, None]):
        q, k, v = (torch.randn(3, 2, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
        out = attention(q, k, v, mask)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, reference)
        for g, r in zip(grads, torch.autograd.grad(reference.sum(), (q, k, v))):
            torch.testing.assert_close(g, r)
