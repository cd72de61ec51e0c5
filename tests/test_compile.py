"""torch.compile of the DiT: same outputs and gradients as eager, one graph for all set lengths, clean fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from sciDiT.flow import flow_matching_loss
from sciDiT.models.dit import DiT
from sciDiT.training import compile as compile_mod
from sciDiT.training.compile import compile_module, compile_problem


def tiny_dit() -> DiT:
    """A small DiT with random (not adaLN-Zero) weights and no label dropout, so compiled and eager see the same function."""
    torch.manual_seed(0)
    model = DiT(latent_dim=4, hidden_size=32, depth=1, num_heads=2, class_dropout_prob=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


def inputs(bsz: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(n)[None, :] < torch.randint(1, n + 1, (bsz,), generator=gen)[:, None]
    mask[0] = True  # the longest set fills the padded length
    return torch.randn(bsz, n, 4, generator=gen) * mask[..., None], torch.rand(bsz, generator=gen), mask, {"domain": torch.arange(bsz) % 2}


@pytest.fixture(scope="module")
def inductor() -> None:
    problem = compile_problem("cpu")
    if problem is not None:
        pytest.skip(f"inductor cannot compile here: {problem}")


def test_compiled_forward_matches_eager_with_one_graph_for_all_lengths(inductor) -> None:
    model = tiny_dit().eval()
    compiled = compile_module(model, "cpu")
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for k, (bsz, n) in enumerate([(3, 5), (4, 9), (6, 7)]):  # three padded lengths, as bucketed batches bring
            x, t, mask, cond = inputs(bsz, n, seed=k)
            torch.testing.assert_close(compiled(x, t, mask, cond), model(x, t, mask, cond), rtol=1e-4, atol=1e-5)
            if k == 0:
                graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs  # no recompilation for new lengths


@pytest.mark.slow
def test_compiled_training_step_matches_eager(inductor) -> None:
    eager = tiny_dit().train()
    compiled = compile_module(copy.deepcopy(eager), "cpu", in_place=True)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # in place: checkpoints keep their keys
    x1, _, mask, cond = inputs(5, 8, seed=3)
    gen = torch.Generator().manual_seed(0)
    x0, t = torch.randn(x1.shape, generator=gen), torch.rand(5, generator=gen)
    losses = []
    for model in (eager, compiled):
        loss = flow_matching_loss(model, x1, mask, cond, x0=x0, t=t, self_condition_prob=1.0, generator=torch.Generator().manual_seed(1))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_unavailable_compiler_falls_back_to_eager_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compile_mod, "compile_problem", lambda device_type: "InvalidCxxCompiler: no working C++ compiler found")
    model = tiny_dit()
    with pytest.warns(UserWarning, match=r"^torch.compile unavailable on cpu \(InvalidCxxCompiler: no working C\+\+ compiler found\); running the DiT eagerly$"):
        assert compile_module(model, "cpu") is model
