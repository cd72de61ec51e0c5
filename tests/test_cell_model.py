"""Cell VAE, perturbation flow and the sciDiT predictor on real Papalexi rows (small subsets)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from conftest import TINY_CELL_DIT, TINY_CELL_VAE
from sciDiT.batch import Domain, TokenSet, collate
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.perturbation import score_perturbations
from sciDiT.models.cell_vae import CELL_VAE_SIZES, CellVAE, cell_vae
from sciDiT.perturbation.baselines import Additive, LinearGeneEmbedding
from sciDiT.perturbation.model import PerturbationFlow, SciDiTPredictor
from sciDiT.tokenizers.cell import CellTokenizer
from sciDiT.training.cell_datamodule import collate_cells, covariate_codes, tokenize_cells
from sciDiT.training.guards import NonFiniteTrainingError


def _batch(adata: ad.AnnData):
    tok = CellTokenizer.from_anndata(adata)
    return tok, collate_cells(tokenize_cells(adata, tok, covariate_codes(adata, "bio_rep", ["rep_1", "rep_2"])))


def test_latent_is_smaller_than_the_cell(cells):
    tok, batch = _batch(cells)
    for size in CELL_VAE_SIZES:
        vae = cell_vae(size, tok.vocab_size, tok.num_genes)
        mean, _ = vae.encode(batch)
        assert mean.shape == (batch.batch_size, vae.num_latent_tokens, vae.latent_dim)
        assert vae.num_latent_tokens * vae.latent_dim < tok.num_genes  # 299 genes per Papalexi cell
        logit, mu = vae.decode(mean)
        assert logit.shape == mu.shape == (batch.batch_size, tok.num_genes)


def test_encoder_is_invariant_to_gene_order(cells):
    torch.manual_seed(0)
    tok, batch = _batch(cells)
    vae = CellVAE(tok.vocab_size, tok.num_genes, **TINY_CELL_VAE).eval()
    sets = batch.unbatch()
    shuffled = collate([s.permute(torch.randperm(s.num_tokens)) for s in sets])
    assert not torch.equal(shuffled.types, batch.types)
    with torch.no_grad():
        for a, b in zip(vae.encode(batch), vae.encode(shuffled)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dense_expression_matches_the_anndata(cells):
    tok, batch = _batch(cells)
    vae = CellVAE(tok.vocab_size, tok.num_genes, **TINY_CELL_VAE)
    x = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    np.testing.assert_allclose(vae.dense_expression(batch).numpy(), x, rtol=1e-6)


def test_sampling_follows_the_hurdle_likelihood(cells):
    """With a constant read-out (detected logit +-20, mean 1, std 0.1) samples and means are known in closed form."""
    tok, batch = _batch(cells)
    vae = CellVAE(tok.vocab_size, tok.num_genes, **TINY_CELL_VAE)
    with torch.no_grad():
        z = vae.encode(batch)[0]
        vae.decoder.loadings.zero_()
        vae.decoder.bias.copy_(torch.tensor([20.0, 1.0]))
        vae.decoder.log_scale.fill_(float(np.log(0.1)))
        x = vae.sample_expression(z, torch.Generator().manual_seed(0))
        torch.testing.assert_close(x, vae.sample_expression(z, torch.Generator().manual_seed(0)))
        assert (x > 0).all() and abs(float(x.mean()) - 1.0) < 0.01 and abs(float(x.std()) - 0.1) < 0.01
        torch.testing.assert_close(vae.expected_expression(z), torch.ones_like(x))
        vae.decoder.bias.copy_(torch.tensor([-20.0, 1.0]))
        assert (vae.sample_expression(z) == 0).all()


def test_flow_source_is_a_control_of_the_same_covariate():
    flow = PerturbationFlow({"vocab_size": 6, "num_genes": 4, **TINY_CELL_VAE}, TINY_CELL_DIT, num_covariates=2, source_noise=0.0)
    flow.control_latents = torch.stack([torch.full((4, 4), 0.0), torch.full((4, 4), 1.0), torch.full((4, 4), 1.0)])
    flow.control_covariates = torch.tensor([0, 1, 1])
    x0 = flow.source(torch.tensor([1, 0, 1, 1, 0]), torch.Generator().manual_seed(0))
    assert x0[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


def _toy_batch(ids: list[list[int]], x: torch.Tensor):
    """Cells with dense expression ``x [B, 3]`` (genes 1..3) and perturbation id sets ``ids`` (ids >= 1)."""
    width = max(1, max(len(i) for i in ids))
    pert = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    sets = [TokenSet(torch.tensor([1, 2, 3]), torch.zeros(3, 3), torch.zeros(3, 3), row, torch.zeros(3, 3), Domain.CELL) for row in x]
    return collate(sets, cond={"perturbation": pert, "perturbation_mask": pert > 0, "covariate": torch.zeros(len(ids), dtype=torch.long)})


def test_priors_are_measured_shifts_else_the_linear_gene_model_in_closed_form():
    # 3 genes (ids 1..3) + one unmeasured extra target (id 4). Controls at 1; knocking out gene 1 moves genes 1 and 3
    # by +1, knocking out gene 2 moves gene 2 by +1: Y = [[1, 0], [0, 1], [1, 0]], b = (.5, .5, .5),
    # E = (1, -1, 1)/sqrt(3) (K = 1), embeddings e_1 = -e_2 = e_3 = 1/sqrt(3), W = 1/1.1 * 1 * 1/(2/3 + 0.1) = 1.1858.
    # Gene 3 was never perturbed: b + E W e_3 = b + 0.3953 (1, -1, 1); with gene 1 too, e = 2/sqrt(3): b + 0.7906 (1, -1, 1).
    flow = PerturbationFlow({"vocab_size": 5, "num_genes": 3, **TINY_CELL_VAE}, TINY_CELL_DIT, profile_dim=1)
    x = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 2.0], [2.0, 1.0, 2.0], [1.0, 2.0, 1.0]])
    batch = _toy_batch([[], [], [1], [1], [2]], x)
    flow.prepare([batch], [batch])
    torch.testing.assert_close(flow.gene_profiles.weight[:, 0].abs(), torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))  # W E[g], mean norm 1
    sets = torch.tensor([[1, 0], [2, 0], [1, 2], [3, 0], [1, 3], [4, 0], [0, 0]])
    expected = torch.tensor([
        [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0],  # measured, and their sum
        [0.8953, 0.1047, 0.8953], [1.2906, -0.2906, 1.2906], [0.5, 0.5, 0.5],  # linear model; unmeasured gene: b
        [0.0, 0.0, 0.0],  # control
    ])
    torch.testing.assert_close(flow.expression_prior(sets), expected, atol=1e-4, rtol=0)
    # latent prior: measured mean changes; for gene 3 the ridge map (intercept, profiles c = +-1): a + 1/2.1 (m1 - m2)
    z = flow.latents(batch)  # [5, K, d]
    m1, m2 = z[2:4].mean(0) - z[:2].mean(0), z[4] - z[:2].mean(0)
    p1, p2, p3, ctrl = flow.latent_prior(torch.tensor([[1], [2], [3], [0]]))
    torch.testing.assert_close(p1, m1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p2, m2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p3, (m1 + m2) / 2 + (m1 - m2) / 2.1, atol=1e-5, rtol=1e-4)
    linear_1 = flow.latent_prior(torch.tensor([[1]]), linear_only=torch.tensor([True]))[0]  # a measured target treated as unseen
    torch.testing.assert_close(linear_1, (m1 + m2) / 2 + (m1 - m2) / 2.1, atol=1e-5, rtol=1e-4)  # gene 1's profile = gene 3's
    assert (ctrl == 0).all()
    assert flow.trained_targets.tolist() == [False, True, True, False, False]
    # the identity channel is hidden for a target set with a gene never perturbed in training, not for controls
    cond = flow.condition(batch, torch.tensor([[1, 0], [4, 0], [1, 4], [0, 0], [2, 1]]))
    assert cond["perturbation_null"].tolist() == [False, True, True, False, False]
    assert flow.condition(batch, hide_identity=torch.tensor([True, False, False, False, False]))["perturbation_null"].tolist() == [True] + [False] * 4


def test_tiny_train_predict_score_and_reload(cells, tmp_path):
    control = cells[cells.obs["perturbation"] == "control"].copy()
    predictor = SciDiTPredictor(vae=TINY_CELL_VAE, dit=TINY_CELL_DIT, vae_steps=3, dit_steps=3, batch_size=32, steps=2, seed=0)
    predictor.fit(cells, work_dir=tmp_path, extra_targets=["NEWTARGET"])  # an unseen, unmeasured target gene
    pred = predictor.predict(control, ["STAT1", "JAK2", "IFNGR2+IFNGR1"])
    # schema a scanpy user and the scorer rely on
    assert pred.n_obs == 3 * control.n_obs and list(pred.var_names) == list(cells.var_names)
    assert pred.obs["perturbation"].value_counts().to_dict() == {"IFNGR1+IFNGR2": control.n_obs, "JAK2": control.n_obs, "STAT1": control.n_obs}
    assert set(pred.obs["control_cell"]) == set(control.obs_names)
    assert list(pred.varm["predicted_shift"].columns) == ["STAT1", "JAK2", "IFNGR1+IFNGR2"]
    assert pred.varm["predicted_lfc"].shape == (cells.n_vars, 3)
    assert pred.layers["shift"].shape == pred.X.shape and (pred.X >= 0).all()
    stat1 = pred.X[pred.obs["perturbation"] == "STAT1"]
    np.testing.assert_allclose(pred.varm["predicted_shift"]["STAT1"], stat1.mean(0) - control.X.toarray().mean(0), atol=1e-5)
    scores = score_perturbations(pred, cells[cells.obs["perturbation"] != "control"].copy(), control, cells)
    assert set(scores.index) == {"STAT1", "JAK2"}
    # a saved predictor reproduces its predictions
    reloaded = SciDiTPredictor.load(predictor.save(tmp_path / "model.ckpt"), steps=2, seed=0)
    again = reloaded.predict(control, ["STAT1", "JAK2", "IFNGR1+IFNGR2"])
    np.testing.assert_allclose(again.X, pred.X, atol=1e-5)
    assert predictor.predict(control, ["NEWTARGET"]).n_obs == control.n_obs  # registered, so it has an embedding
    # the prior of a measured gene never perturbed is the linear baseline's shift; of a seen target, its measured shift
    gene = next(g for g in cells.var_names if g not in set(cells.obs["perturbation"]))
    flow, tok = predictor.module.model, predictor.module.tokenizer
    prior = flow.expression_prior(tok.pad_perturbation_ids(tok.perturbation_ids([gene, "STAT1"])))
    np.testing.assert_allclose(prior[0].numpy(), LinearGeneEmbedding().fit(cells).shift(frozenset({gene})), atol=1e-4)
    np.testing.assert_allclose(prior[1].numpy(), Additive().fit(cells).shift(frozenset({"STAT1"})), atol=1e-4)
    with pytest.raises(SciDiTInputError, match="NOTAGENE"):
        predictor.predict(control, ["NOTAGENE"])


def test_same_seed_same_predictions(tiny_predictor, cells):
    """predict() with one seed: bit-identical across calls, the same cells and values for any batch size."""
    control = cells[cells.obs["perturbation"] == "control"].copy()
    a = tiny_predictor.predict(control, ["STAT1", "JAK2"], n_cells=30, batch_size=7)
    again = tiny_predictor.predict(control, ["STAT1", "JAK2"], n_cells=30, batch_size=7)
    whole = tiny_predictor.predict(control, ["STAT1", "JAK2"], n_cells=30, batch_size=1024)
    assert np.array_equal(a.X, again.X) and np.array_equal(a.layers["shift"], again.layers["shift"])
    assert list(a.obs["control_cell"]) == list(whole.obs["control_cell"])
    np.testing.assert_allclose(a.X, whole.X, rtol=0, atol=1e-5)  # float rounding of batched matmuls only
    other = SciDiTPredictor(seed=1)
    other.module, other.steps = tiny_predictor.module, tiny_predictor.steps
    drawn = other.predict(control, ["STAT1"], n_cells=30)
    assert list(drawn.obs["control_cell"]) != list(a.obs["control_cell"][a.obs["perturbation"] == "STAT1"])  # another seed, other cells


def test_reproducible_predictions_are_bit_identical_for_any_batch_size(tiny_predictor, cells):
    """predict(reproducible=True): each control cell encoded and transported alone, so batch sizes 1, 3, 7 and two runs
    give the same bits, cells drawn with replacement included."""
    control = cells[cells.obs["perturbation"] == "control"].copy()
    runs = [tiny_predictor.predict(control, ["STAT1", "IFNGR1+JAK2"], n_cells=50, batch_size=b, reproducible=True) for b in (1, 3, 7, 7)]
    for run in runs[1:]:
        assert np.array_equal(run.X, runs[0].X) and np.array_equal(run.layers["shift"], runs[0].layers["shift"])
        assert list(run.obs["control_cell"]) == list(runs[0].obs["control_cell"])
        assert all(np.array_equal(run.varm[k].to_numpy(), runs[0].varm[k].to_numpy()) for k in ("predicted_shift", "predicted_lfc"))


def test_unfitted_predictor_and_bad_checkpoint_are_clear_errors(cells, tmp_path):
    with pytest.raises(SciDiTInputError, match="not trained"):
        SciDiTPredictor().predict(cells, ["STAT1"])
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(SciDiTInputError, match="bad.ckpt"):
        SciDiTPredictor.load(bad)


def test_a_cell_without_expressed_genes_is_a_clear_error(cells):
    bad = cells[:3].copy()
    bad.X = bad.X.toarray()
    bad.X[1] = 0.0
    tok = CellTokenizer.from_anndata(cells)
    with pytest.raises(SciDiTInputError, match=bad.obs_names[1]):
        tokenize_cells(bad, tok, covariate_codes(bad, "bio_rep", ["rep_1", "rep_2"]))


@pytest.mark.parametrize("stage", ["vae", "dit"])
def test_fit_stops_on_nan_naming_stage_and_step_and_keeps_the_last_good_weights(cells, tmp_path, stage):
    """lr=1e6 blows the weights up within the first steps, after which every loss is NaN: fit stops after
    ``non_finite_patience`` skipped steps in a row (long before its 20 steps) with one line, and no NaN reaches the weights."""
    predictor = SciDiTPredictor(vae=TINY_CELL_VAE, dit=TINY_CELL_DIT, vae_steps=2 if stage == "dit" else 20, dit_steps=20, batch_size=32, seed=0,
                                module_kwargs={stage: {"lr": 1e6, "warmup_steps": 0}}, non_finite_patience=3)
    with pytest.raises(NonFiniteTrainingError, match=rf"^SciDiTPredictor.fit: cell_{stage} stage stopped at step \d: .* 3 consecutive steps") as info:
        predictor.fit(cells, work_dir=tmp_path)
    assert "\n" not in str(info.value)
    if stage == "vae":
        assert predictor.module is None  # the predictor stays untrained
    else:
        weights = predictor.module.model.dit.state_dict()
        assert all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point())
