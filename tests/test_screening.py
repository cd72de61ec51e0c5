"""Generate-and-screen by half-B property predictors of the decoded molecules, kept apart from the half-A judges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.property_predictor import AtomCountBaseline, PropertyPredictor, load_judges, load_screeners, save_predictor

HPARAMS = {"hidden": 8, "filters": 8, "interactions": 1, "gaussians": 5, "mean": 0.0, "std": 1.0}


def _atom_counter() -> PropertyPredictor:
    """A SchNet whose every atom adds exactly 1 to the sum readout: it "predicts" the number of atoms (closed form)."""
    model = PropertyPredictor(**HPARAMS)
    with torch.no_grad():
        model.net.lin2.weight.zero_()
        model.net.lin2.bias.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def gap_stats(data_dir, cache_dir):
    """The QM9 gap's condition statistics (range, std, sizes given the value) over 200 real training rows."""
    from sciDiT.data.conditions import condition_stats
    from sciDiT.data.qm9 import load_qm9_properties, load_qm9_split

    data = load_qm9_split("train", data_dir, cache_dir, limit=200)
    gap = load_qm9_properties(("gap",), data_dir, cache_dir)["gap"].reindex(np.asarray(data.meta_column("qm9_index"))).to_numpy()
    return condition_stats(["gap"], [(data, {"gap": gap})])


def _save(folder, half: str, stats=None):
    info = {"half": half, **({"condition_stats": stats} if stats is not None else {})}
    return save_predictor(folder / "gap.pt", "gap", _atom_counter(), HPARAMS, AtomCountBaseline([5], [1.0], 0.0, 1.0), info)


def test_screening_and_judging_predictors_are_kept_apart(tmp_path, gap_stats):
    half_a, half_b = _save(tmp_path / "a", "A"), _save(tmp_path / "b", "B", gap_stats)
    assert [j[0] for j in load_judges(half_a)] == ["gap"] and list(load_screeners(half_b)) == ["gap"]
    with pytest.raises(SciDiTInputError, match="half B .* cannot judge"):
        load_judges(half_b.parent)
    with pytest.raises(SciDiTInputError, match="not a screening predictor"):
        load_screeners(half_a)
    with pytest.raises(SciDiTInputError, match="not a screening predictor"):  # half B but no statistics to validate requests
        load_screeners(_save(tmp_path / "c", "B"))


class AtomCounter(torch.nn.Module):
    """A stand-in screening predictor that reads each molecule as its number of atoms (closed form, any element)."""

    def forward(self, z, pos, batch):
        return torch.bincount(batch).double()


def test_structure_screen_keeps_the_candidate_nearest_the_request(tiny_dit_ckpt, gap_stats, monkeypatch):
    import sciDiT.generate as generate

    gen = generate.load_generator(tiny_dit_ckpt)
    gen.screeners, gen.screener_stats = {"gap": AtomCounter()}, gap_stats
    gen.request_stats = {**gap_stats, **gen.request_stats}
    monkeypatch.setattr(generate, "scorable", lambda ts: True)  # the untrained model decodes elements outside QM9
    target = 12.0  # eV, read by the counter as a number of atoms
    kwargs = dict(n=6, steps=3, seed=0, progress=False, bond_decoding="argmax", condition={"gap": target})
    once = gen.generate_token_sets("molecule", **kwargs)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(once, gen.generate_token_sets("molecule", property_screen=1, **kwargs)))
    screened = gen.generate_token_sets("molecule", property_screen=4, **kwargs)
    for first, best in zip(once, screened):
        screen = json.loads(best.meta["screen"])
        assert screen["candidates"] == 4 and screen["predicted_gap"] == best.num_tokens
        assert abs(best.num_tokens - target) <= abs(first.num_tokens - target)  # candidate 0 is the unscreened sample
        assert json.loads(best.meta["request"]) == {"gap": target}
    assert sum(abs(ts.num_tokens - target) for ts in screened) < sum(abs(ts.num_tokens - target) for ts in once)


def test_structure_screen_from_a_file_skips_unreadable_candidates(tiny_dit_ckpt, tmp_path, gap_stats):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt, screen_predictor=_save(tmp_path, "B", gap_stats))
    kwargs = dict(n=3, steps=2, seed=0, progress=False, bond_decoding="argmax", condition={"gap": 7.0})
    once = gen.generate_token_sets("molecule", **kwargs)
    screened = gen.generate_token_sets("molecule", property_screen=2, **kwargs)
    for first, best in zip(once, screened):  # untrained: elements outside QM9 in every candidate, which no SchNet reads
        assert json.loads(best.meta["screen"]) == {"candidates": 2, "chosen": 0}  # then candidate 0, the unscreened sample
        assert torch.equal(first.pos, best.pos)
    with pytest.raises(SciDiTInputError, match="property_screen chooses by the screening predictors"):
        gen.generate_token_sets("molecule", n=2, steps=2, progress=False, property_screen=2)
