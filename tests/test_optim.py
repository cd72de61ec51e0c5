"""AdamW kernels: the fused and foreach updates equal the per-parameter reference update."""

from __future__ import annotations

import copy

import pytest
import torch

from sciDiT.models.dit import DiT
from sciDiT.training.optim import adamw, adamw_for, build_optimizer


def _steps(model: torch.nn.Module, implementation: str, n: int = 3) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """``n`` AdamW steps on a fixed regression loss; returns the optimiser and the final weights."""
    model = copy.deepcopy(model)
    opt = adamw(model.parameters(), lr=1e-2, weight_decay=0.05, implementation=implementation, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 8, generator=gen)
    mask = torch.ones(4, 5, dtype=torch.bool)
    t = torch.rand(4, generator=gen)
    for _ in range(n):
        out = model(x, t, mask, {"domain": torch.tensor([0, 1, 0, 1])})
        loss = ((out - x) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_adamw_kernels_equal_the_reference_step(implementation: str) -> None:
    torch.manual_seed(0)
    model = DiT(latent_dim=8, hidden_size=32, depth=2, num_heads=4, self_condition=False)
    ref_opt, ref = _steps(model, "for-loop")
    opt, got = _steps(model, implementation)
    assert opt.defaults["fused" if implementation == "fused" else "foreach"]  # the kernel asked for is the one used
    moved = sum(float((a - b.detach()).abs().max()) for a, b in zip(ref, model.parameters()))
    assert moved > 1e-3  # the steps did change the weights
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # 0.1% of one step of size lr


def test_auto_picks_fused_on_cpu_and_keeps_fp32_state() -> None:
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), lr=1e-3, weight_decay=0.0, warmup_steps=1, max_steps=10)["optimizer"]
    assert opt.defaults["fused"]
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.float32}


def test_fused_falls_back_with_a_warning_for_non_float_parameters() -> None:
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]
    with pytest.warns(UserWarning, match="fused AdamW unavailable"):
        opt = adamw(params, lr=1e-3, weight_decay=0.0, implementation="fused")
    assert opt.defaults["foreach"] and not opt.defaults["fused"]


def test_lightning_gets_foreach_where_its_mixed_precision_plugin_cannot_clip_fused_gradients() -> None:
    trainer = lambda precision, clip: type("T", (), {"precision": precision, "gradient_clip_val": clip})()  # noqa: E731
    assert adamw_for(trainer("bf16-mixed", 1.0)) == "foreach"
    assert adamw_for(trainer("16-mixed", 0.5)) == "foreach"
    assert adamw_for(trainer("bf16-mixed", None)) == "auto"
    assert adamw_for(trainer("32-true", 1.0)) == "auto"
