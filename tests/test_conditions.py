"""Conditional generation: conditions from real QM9 / MP-20 rows, their statistics in the checkpoint,
requests in the API and the CLI (validation, outputs), null embeddings and per-condition guidance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure
from rdkit import Chem

from conftest import COND_NAMES, TINY_DIT
from sciDiT.batch import Domain
from sciDiT.checkpoint import load_checkpoint
from sciDiT.data.conditions import CONDITION_KEYS, HARTREE_EV, encode_conditions, request_json, size_distribution, validate_request
from sciDiT.data.qm9 import QM9_SIZE, edm_property_halves, find_qm9, qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.export import MANIFEST
from sciDiT.flow import guided_velocity
from sciDiT.generate import load_generator
from sciDiT.models.dit import DiT
from sciDiT.sample import main
from sciDiT.tokenizers.elements import atomic_number, symbol
from sciDiT.training.datamodule import TokenSetDataModule
from sciDiT.training.dit_module import CONDITION_STATS_KEY

FAST = {"steps": 3, "progress": False}


@pytest.fixture(scope="module")
def gen(tiny_cond_ckpt):
    return load_generator(tiny_cond_ckpt)


@pytest.fixture(scope="module")
def dm(data_dir, cache_dir):
    module = TokenSetDataModule([{"name": "qm9", "limit": 300}, {"name": "mp20", "limit": 60}], data_dir=str(data_dir), cache_dir=str(cache_dir),
                                batch_size=16, parse_workers=1, conditions=COND_NAMES)
    module.setup("fit")
    return module


# -- data: values, statistics, encoding -----------------------------------------------------------


def test_statistics_come_from_the_training_split_in_user_units(dm):
    """The gap statistics equal those of the qm9pack column (Hartree -> eV) over the training molecules only."""
    _, folder = find_qm9()
    csv = pd.read_csv(folder / "qm9_part1.csv", usecols=["Index", "HOMO_LUMO_gap_au"], nrows=300)
    gap_of = dict(zip(csv["Index"], csv["HOMO_LUMO_gap_au"] * HARTREE_EV))
    qm9_train = dm.splits["train"][0]
    gaps = np.array([gap_of[i] for i in qm9_train.meta_column("qm9_index")])
    stats = dm.condition_stats()
    assert stats["gap"]["count"] == len(qm9_train) < 300  # val/test molecules are not counted
    assert stats["gap"]["mean"] == pytest.approx(gaps.mean()) and stats["gap"]["std"] == pytest.approx(gaps.std())
    assert (stats["gap"]["min"], stats["gap"]["max"]) == pytest.approx((gaps.min(), gaps.max()))
    mp20_train = dm.splits["train"][1]
    assert set(stats["spacegroup"]["seen"]) == set(mp20_train.meta_column("spacegroup"))
    assert set(stats["elements"]["seen"]) == set(torch.cat([mp20_train[i].types for i in range(len(mp20_train))]).tolist())
    assert stats["gap"]["unit"] == "eV" and stats["band_gap"]["domain"] == "crystal"


def test_size_tables_count_the_training_sizes_given_each_value(dm):
    """Each table holds every training set with a value once, under its value's bin, at its own size."""
    stats = dm.condition_stats()
    qm9_train, mp20_train = dm.splits["train"]
    gap = stats["gap"]
    assert sum(sum(c) for c in gap["size_counts"].values()) == gap["count"]
    assert gap["size_edges"] == sorted(gap["size_edges"]) and gap["min"] < gap["size_edges"][0] <= gap["size_edges"][-1] < gap["max"]
    groups = np.asarray(mp20_train.meta_column("spacegroup"))
    for group, counts in stats["spacegroup"]["size_counts"].items():
        assert counts == np.bincount(mp20_train.num_tokens[groups == group]).tolist()
    k = mp20_train.num_distinct_types()
    assert {b: sum(c) for b, c in stats["elements"]["size_counts"].items()} == {int(b): int((k == b).sum()) for b in np.unique(k)}


def test_size_distribution_is_the_smoothed_conditional_and_a_product_of_experts():
    prior = np.array([0.0, 0.0, 4.0, 0.0, 6.0])  # training histogram: sizes 2 and 4
    stats = {"x": {"kind": "vector", "size_edges": [0.0], "size_counts": {0: [0, 0, 4], 1: [0, 0, 0, 0, 6]}},
             "g": {"kind": "class", "size_counts": {7: [0, 0, 1, 0, 1]}},
             "y": {"kind": "vector"}}  # a checkpoint without tables for y
    # x < 0: the 4 sets of size 2, plus one pseudo-set spread as the prior (0.4 / 0.6)
    np.testing.assert_allclose(size_distribution({"x": -1.0}, stats, prior), [0, 0, 4.4 / 5, 0, 0.6 / 5])
    np.testing.assert_allclose(size_distribution({"x": 0.5}, stats, prior), [0, 0, 0.4 / 7, 0, 6.6 / 7])
    # two conditions: p(n) * prod_k p(n | c_k) / p(n), normalised
    px, pg = np.array([0.88, 0.12]), np.array([(1 + 0.4) / 3, (1 + 0.6) / 3])
    both = px * pg / np.array([0.4, 0.6])
    np.testing.assert_allclose(size_distribution({"x": -1.0, "g": 7}, stats, prior)[[2, 4]], both / both.sum())
    np.testing.assert_allclose(size_distribution({"g": 9}, stats, prior), prior / prior.sum())  # an unseen group: the prior
    assert size_distribution({"y": 1.0}, stats, prior) is None and size_distribution({}, stats, prior) is None


def test_requests_are_sized_from_the_training_sizes_given_the_value(gen):
    """A low-gap request draws larger molecules than a high-gap one when the training data says so; condition_sizes=False
    draws from the unconditional histogram, exactly as an unconditional run with the same seed."""
    gap = gen.condition_stats["gap"]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(400)]  # noqa: E731
    low, high = (gen.set_sizes(Domain.MOLECULE, 400, None, gens(), request={"gap": v}).float().mean() for v in (gap["min"], gap["max"]))
    edges, counts = gap["size_edges"], gap["size_counts"]
    mean_size = lambda row: np.dot(np.arange(len(row)), row) / np.sum(row)  # noqa: E731
    assert (low > high) == (mean_size(counts[0]) > mean_size(counts[len(edges)]))
    assert abs(float(low) - mean_size(counts[0])) < 1.0 and abs(float(high) - mean_size(counts[len(edges)])) < 1.0
    plain = gen.generate_token_sets("molecule", n=6, seed=3, **FAST)
    marginal = gen.generate_token_sets("molecule", n=6, seed=3, condition={"gap": gap["min"]}, condition_sizes=False, **FAST)
    assert [ts.num_tokens for ts in marginal] == [ts.num_tokens for ts in plain]


def test_a_checkpoint_without_size_tables_warns_and_draws_unconditional_sizes(gen):
    from sciDiT.generate import Generator

    stats = {k: {f: v for f, v in st.items() if not f.startswith("size_")} for k, st in gen.condition_stats.items()}
    old = Generator(gen.model, gen.ema_dit, condition_stats=stats)
    with pytest.warns(UserWarning, match="no table of sizes given its conditions"):
        sizes = old.set_sizes(Domain.MOLECULE, 5, None, [torch.Generator().manual_seed(i) for i in range(5)], request={"gap": 6.0})
    assert sizes.tolist() == old.set_sizes(Domain.MOLECULE, 5, None, [torch.Generator().manual_seed(i) for i in range(5)]).tolist()


def test_normalisation_round_trip_and_nulls(dm):
    stats = dm.condition_stats()
    values = [{"gap": 6.5, "mu": 1.25}, {"spacegroup": 225, "band_gap": 1.0, "elements": ["Li", "Fe", "P", "O"]}]
    cond = encode_conditions(values, stats)
    for b, key in ((0, "gap"), (0, "mu"), (1, "band_gap")):
        assert float(cond[key][b, 0]) * stats[key]["std"] + stats[key]["mean"] == pytest.approx(values[b][key], abs=1e-5)
    assert cond["gap_null"].tolist() == [False, True] and cond["spacegroup_null"].tolist() == [True, False]
    assert int(cond["spacegroup"][1]) == 224  # class index = group - 1
    assert sorted(cond["elements"][1][cond["elements_mask"][1]].tolist()) == [3, 8, 15, 26]
    # a training batch: molecules carry their gap, crystals a null gap and their own element set
    batch = next(iter(dm.train_dataloader()))
    mol = batch.domain == int(Domain.MOLECULE)
    assert torch.equal(batch.cond["gap_null"], ~mol) and torch.equal(batch.cond["spacegroup_null"], mol)
    for b in torch.nonzero(~mol).flatten().tolist():
        elements = set(batch.cond["elements"][b][batch.cond["elements_mask"][b]].tolist())
        assert elements == set(batch.types[b][batch.mask[b]].tolist())


def test_unknown_data_condition_and_a_mismatched_dit_spec_are_one_line():
    with pytest.raises(SciDiTInputError, match="unknown condition"):
        TokenSetDataModule(["qm9"], conditions=["bandgap"])
    from sciDiT.data.conditions import check_condition_names

    with pytest.raises(SciDiTInputError, match="needs model.dit.conditions.gap"):
        check_condition_names(["gap"], {"domain": {"kind": "class", "num_classes": 3}})
    with pytest.raises(SciDiTInputError, match="does not provide them"):
        check_condition_names([], {"gap": {"kind": "vector", "dim": 1}})


def test_property_conditions_need_the_qm9pack_layout_and_a_domain_with_values(dm, tmp_path):
    from sciDiT.data.conditions import condition_stats, condition_values

    qm9 = dm.splits["train"][0]
    with pytest.raises(SciDiTInputError, match="need the qm9pack layout"):
        condition_values(qm9, ["gap"], tmp_path, "pyg", tmp_path)
    assert condition_values(qm9, ["band_gap"], tmp_path, "pyg", tmp_path) == {}  # crystal keys do not apply to molecules
    with pytest.raises(SciDiTInputError, match="no training set has a value for 'band_gap'"):
        condition_stats(["band_gap"], [(qm9, {})])


def test_edm_property_halves_are_disjoint_seeded_and_cover_the_train_split():
    halves = edm_property_halves()
    train = qm9_split()["train"]
    assert len(halves["A"]) == len(halves["B"]) == len(train) // 2
    assert not set(halves["A"]) & set(halves["B"]) and set(halves["A"]) | set(halves["B"]) == set(train)
    perm = np.random.default_rng(43).permutation(train)
    assert np.array_equal(halves["A"], perm[: len(perm) // 2]) and np.array_equal(edm_property_halves()["B"], halves["B"])
    assert not np.array_equal(edm_property_halves(seed=7)["A"], halves["A"])


def test_datamodule_trains_on_one_edm_half(data_dir, cache_dir):
    dm = TokenSetDataModule([{"name": "qm9", "limit": 300, "edm_half": "B"}], data_dir=str(data_dir), cache_dir=str(cache_dir))
    dm.setup("fit")
    rows = dm.splits["train"][0].indices  # rows of the QM9 store (= QM9 row positions)
    half_b = set(edm_property_halves(QM9_SIZE)["B"])
    expected = [r for r in qm9_split(QM9_SIZE)["train"] if r < 300 and r in half_b]
    assert len(rows) > 0 and sorted(rows.tolist()) == sorted(expected)
    with pytest.raises(SciDiTInputError, match="edm_half must be A or B"):
        TokenSetDataModule([{"name": "mp20", "edm_half": "A"}])


# -- the model: null embeddings, guidance --------------------------------------------------------


def _tiny_conditional_dit() -> DiT:
    torch.manual_seed(0)
    conditions = {"domain": {"kind": "class", "num_classes": 3}, "gap": {"kind": "vector", "dim": 1},
                  "spacegroup": {"kind": "class", "num_classes": 230}, "elements": {"kind": "token_set", "num_tokens": 119}}
    dit = DiT(latent_dim=4, conditions=conditions, self_condition=False, **TINY_DIT).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return dit


def test_a_missing_condition_is_exactly_its_null_embedding():
    dit = _tiny_conditional_dit()
    t_emb = dit.t_embedder(torch.rand(3))
    base = {"domain": torch.zeros(3, dtype=torch.long)}
    full = {**base, "gap": torch.randn(3, 1), "spacegroup": torch.tensor([0, 5, 224]), "elements": torch.tensor([[3, 8], [26, 0], [1, 1]]),
            "elements_mask": torch.tensor([[True, True], [True, False], [True, True]])}
    absent = dit.embed_conditions(base, None, t_emb)
    nulled = dit.embed_conditions({**full, **{f"{k}_null": torch.ones(3, dtype=torch.bool) for k in ("gap", "spacegroup", "elements")}}, None, t_emb)
    assert torch.equal(absent, nulled)
    assert not torch.allclose(absent, dit.embed_conditions(full, None, t_emb))
    partly = dit.embed_conditions({**full, "gap_null": torch.tensor([True, False, False])}, None, t_emb)
    only_gap_absent = dit.embed_conditions({k: v for k, v in full.items() if k != "gap"}, None, t_emb)
    assert torch.equal(partly[0], only_gap_absent[0]) and not torch.allclose(partly[1], only_gap_absent[1])


def test_per_condition_guidance_is_cfg_on_that_condition():
    dit = _tiny_conditional_dit()
    x, t, mask = torch.randn(2, 5, 4), torch.rand(2), torch.ones(2, 5, dtype=torch.bool)
    cond = {"domain": torch.zeros(2, dtype=torch.long), "gap": torch.randn(2, 1), "spacegroup": torch.tensor([3, 4]),
            "spacegroup_null": torch.tensor([False, False])}
    v_c = dit(x, t, mask, cond)
    without_gap = dit(x, t, mask, {k: v for k, v in cond.items() if k != "gap"})
    without_sg = dit(x, t, mask, {**cond, "spacegroup_null": torch.ones(2, dtype=torch.bool)})
    assert torch.allclose(guided_velocity(dit, x, t, mask, cond, {"gap": 3.0}), without_gap + 3.0 * (v_c - without_gap), atol=1e-5)
    both = guided_velocity(dit, x, t, mask, cond, {"gap": 2.0, "spacegroup": 0.5})
    assert torch.allclose(both, v_c + (v_c - without_gap) - 0.5 * (v_c - without_sg), atol=1e-5)
    assert torch.equal(guided_velocity(dit, x, t, mask, cond, {"gap": 1.0}), v_c)
    with pytest.raises(ValueError, match="does not carry"):
        guided_velocity(dit, x, t, mask, cond, {"elements": 2.0})


# -- requests: API --------------------------------------------------------------------------------


def _same(a, b) -> bool:
    return all(torch.equal(x.types, y.types) and torch.equal(x.pos, y.pos) and torch.equal(x.lattice, y.lattice) for x, y in zip(a, b, strict=True))


def test_a_condition_changes_the_output_and_no_request_is_unconditional(gen):
    stats = gen.condition_stats
    lo, hi = stats["gap"]["min"], stats["gap"]["max"]
    fixed = {**FAST, "condition_sizes": False}  # sizes from the unconditional histogram: only the request differs
    a = gen.generate_token_sets("molecule", n=6, seed=2, condition={"gap": lo}, **fixed)
    b = gen.generate_token_sets("molecule", n=6, seed=2, condition={"gap": hi}, **fixed)
    again = gen.generate_token_sets("molecule", n=6, seed=2, condition={"gap": lo}, **fixed)
    assert _same(a, again) and not _same(a, b)
    assert [ts.num_tokens for ts in a] == [ts.num_tokens for ts in b]  # same seed: same sizes and noise, only the request differs
    assert not _same(a, gen.generate_token_sets("molecule", n=6, seed=2, condition={"gap": lo}, guidance={"gap": 3.0}, **fixed))
    uncond = gen.generate_token_sets("molecule", n=6, seed=2, **FAST)
    assert not _same(a, uncond) and all("request" not in ts.meta for ts in uncond)
    assert {ts.meta["request"] for ts in a} == {json.dumps({"gap": lo})}
    xtals = gen.generate_token_sets("crystal", n=4, seed=0, condition={"spacegroup": stats["spacegroup"]["seen"][0], "elements": ["O"]}, **FAST)
    assert json.loads(xtals[0].meta["request"]) == {"elements": ["O"], "spacegroup": stats["spacegroup"]["seen"][0]}


def test_composition_requested_gives_exactly_the_requested_element_set(gen):
    request = {"elements": ["Li", "O", "Fe"]}
    if not {3, 8, 26} <= set(gen.condition_stats["elements"]["seen"]):
        request = {"elements": [symbol(z) for z in gen.condition_stats["elements"]["seen"][:3]]}
    free = gen.generate_token_sets("crystal", n=6, seed=1, condition=request, **FAST)
    sets = gen.generate_token_sets("crystal", n=6, seed=1, condition=request, composition="requested", **FAST)
    wanted = {atomic_number(s) for s in request["elements"]}
    assert all(set(ts.types.tolist()) == wanted and ts.num_tokens >= 3 for ts in sets)
    assert any(set(ts.types.tolist()) != wanted for ts in free)  # a tiny untrained model: conditioning alone misses
    with pytest.raises(SciDiTInputError, match="composition=requested enforces condition.elements"):
        gen.generate_token_sets("crystal", n=2, seed=1, composition="requested", **FAST)
    with pytest.raises(SciDiTInputError, match="num_atoms=2 is fewer than the 3 requested elements"):
        gen.generate_token_sets("crystal", n=2, seed=1, num_atoms=2, condition=request, composition="requested", **FAST)


def test_composition_balanced_changes_only_types_and_balances_where_it_can(gen):
    from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity

    free = gen.generate_token_sets("crystal", n=6, seed=1, **FAST)
    balanced = gen.generate_token_sets("crystal", n=6, seed=1, composition="balanced", **FAST)
    for a, b in zip(free, balanced, strict=True):
        assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)
        assert smact_validity(*reduced_counts(b.types.tolist())) or torch.equal(a.types, b.types)
    assert sum(smact_validity(*reduced_counts(ts.types.tolist())) for ts in balanced) > sum(
        smact_validity(*reduced_counts(ts.types.tolist())) for ts in free)


def test_num_atoms_in_a_request_sizes_the_sets(gen):
    sets = gen.generate_token_sets("molecule", n=3, seed=0, condition={"num_atoms": 9, "mu": gen.condition_stats["mu"]["mean"]}, **FAST)
    assert [ts.num_tokens for ts in sets] == [9, 9, 9] and json.loads(sets[0].meta["request"])["num_atoms"] == 9


@pytest.mark.parametrize(
    "domain, condition, extra, message",
    [
        ("molecule", {"bandgap": 1.0}, {}, "condition.bandgap: unknown condition; known: alpha"),
        ("molecule", {"alpha": 70.0}, {}, "condition.alpha: this checkpoint was not trained with it (its conditions: gap, mu"),
        ("molecule", {"spacegroup": 225}, {}, "condition.spacegroup applies to domain=crystal, not domain=molecule"),
        ("crystal", {"gap": 6.5}, {}, "condition.gap applies to domain=molecule, not domain=crystal"),
        ("molecule", {"gap": 100.0}, {}, "condition.gap=100 eV is outside the training range"),
        ("molecule", {"gap": "wide"}, {}, "condition.gap must be a finite number (eV), got 'wide'"),
        ("molecule", {"gap": float("nan")}, {}, "condition.gap must be a finite number"),
        ("crystal", {"spacegroup": 231}, {}, "condition.spacegroup must be an integer space-group number in 1..230"),
        ("crystal", {"spacegroup": 2.5}, {}, "must be an integer space-group number"),
        ("crystal", {"elements": ["Li", "Xx"]}, {}, "condition.elements: unknown element 'Xx'"),
        ("crystal", {"elements": "[]"}, {}, "condition.elements must be a non-empty list of element symbols"),
        ("crystal", {"elements": ["Og"]}, {}, "condition.elements: no training crystal contains Og; pass allow_extrapolation=true"),
        ("molecule", {"num_atoms": 0}, {}, "condition.num_atoms must be a positive integer"),
        ("molecule", {"num_atoms": 5}, {"num_atoms": 5}, "give num_atoms or condition.num_atoms, not both"),
        ("molecule", {"gap": 7.0}, {"guidance": {"mu": 2.0}}, "guidance.mu: only requested conditions of the DiT (or domain) take classifier-free guidance"),
        ("molecule", {"gap": 7.0}, {"guidance": {"gap": 2.0}, "cfg_scale": 2.0}, "give cfg_scale or per-condition guidance"),
        ("molecule", {"gap": 7.0}, {"guidance": {"gap": float("inf")}}, "guidance.gap must be a finite number"),
    ],
)
def test_bad_requests_are_one_line_errors(gen, domain, condition, extra, message):
    with pytest.raises(SciDiTInputError) as err:
        gen.generate_token_sets(domain, n=2, condition=condition, **extra, **FAST)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_extrapolation_needs_the_flag(gen):
    far = gen.condition_stats["gap"]["max"] + 5.0
    sets = gen.generate_token_sets("molecule", n=2, condition={"gap": far}, allow_extrapolation=True, **FAST)
    assert json.loads(sets[0].meta["request"]) == {"gap": far}
    assert validate_request({"elements": ["Og", "li"]}, Domain.CRYSTAL, gen.condition_stats, allow_extrapolation=True) == {"elements": ["Li", "Og"]}
    assert validate_request({"elements": {"Fe", "O"}}, Domain.CRYSTAL, gen.condition_stats, allow_extrapolation=True) == {"elements": ["O", "Fe"]}


def test_old_checkpoints_without_conditions_sample_unconditionally(tiny_dit_ckpt):
    old = load_generator(tiny_dit_ckpt)
    assert old.condition_stats == {} and len(old.generate_token_sets("molecule", n=2, **FAST)) == 2
    with pytest.raises(SciDiTInputError, match=r"not trained with it \(its conditions: none"):
        old.generate_token_sets("molecule", n=2, condition={"gap": 6.5}, **FAST)


def test_checkpoint_stores_the_statistics_as_plain_data(tiny_cond_ckpt, gen):
    raw = load_checkpoint(tiny_cond_ckpt)  # weights only: nothing but tensors and plain data
    assert set(raw[CONDITION_STATS_KEY]) == set(COND_NAMES) and raw[CONDITION_STATS_KEY] == gen.condition_stats
    def plain(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, (int, str)) and plain(x) for k, x in v.items())
        return isinstance(v, (int, float, str)) or (isinstance(v, list) and all(plain(x) for x in v))

    assert all(plain(entry) for entry in raw[CONDITION_STATS_KEY].values())
    assert all(isinstance(c, int) for c in raw[CONDITION_STATS_KEY]["gap"]["size_counts"][0])  # counts, not tensors or numpy scalars


# -- requests: CLI and files ------------------------------------------------------------------------


def test_cli_writes_the_request_into_sd_records_manifest_rows_and_cifs(tiny_cond_ckpt, gen, tmp_path):
    gap = round(gen.condition_stats["gap"]["mean"], 2)
    sdf = tmp_path / "gap.sdf"
    assert main([f"ckpt={tiny_cond_ckpt}", "domain=molecule", "n=4", f"out={sdf}", f"condition.gap={gap}", "guidance.gap=2.0", "progress=false", "steps=2"]) == 0
    mols = list(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False))
    assert len(mols) == 4 and {m.GetProp("request") for m in mols} == {request_json({"gap": gap})}
    sg = gen.condition_stats["spacegroup"]["seen"][-1]
    folder = tmp_path / "xtals"
    args = [f"ckpt={tiny_cond_ckpt}", "domain=crystal", "n=4", f"out={folder}", f"condition.spacegroup={sg}", "condition.elements=[O,Li]", "progress=false", "steps=2"]
    assert main(args) == 0
    manifest = pd.read_csv(folder / MANIFEST, sep="\t", dtype=str, keep_default_na=False)
    expected = json.dumps({"elements": ["Li", "O"], "spacegroup": sg}, sort_keys=True)
    assert list(manifest["request"]) == [expected] * 4
    for cif in folder.glob("*.cif"):
        assert f"_scidit_request   '{expected}'" in cif.read_text()
        Structure.from_file(cif)  # the extra data item does not disturb readers
    one = tmp_path / "all.cif"
    assert main(args[:3] + [f"out={one}"] + args[4:]) == 0
    assert one.read_text().count("_scidit_request") == one.read_text().count("data_")
    enforced = tmp_path / "enforced"
    assert main(args[:3] + [f"out={enforced}"] + args[4:] + ["composition=requested"]) == 0
    assert [{el.symbol for el in Structure.from_file(cif).composition} for cif in sorted(enforced.glob("*.cif"))] == [{"Li", "O"}] * 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["condition.gapp=6.5"], "condition.gapp: unknown condition"),
        (["condition.gap=abc"], "condition.gap must be a finite number (eV), got 'abc'"),
        (["condition.gap=1000"], "is outside the training range"),
        (["condition.alpha=70"], "not trained with it"),
        (["condition.spacegroup=225"], "applies to domain=crystal"),
        (["condition.gap=7", "guidance.gap=lots"], "guidance.gap='lots': expected a number"),
        (["condition.=1"], "condition. needs a key"),
        (["allow_extrapolation=perhaps"], "allow_extrapolation='perhaps'"),
    ],
)
def test_cli_bad_requests_are_one_line_and_exit_2(tiny_cond_ckpt, tmp_path, capsys, args, message):
    code = main([f"ckpt={tiny_cond_ckpt}", "domain=molecule", "n=2", f"out={tmp_path}/m.sdf", "progress=false", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "m.sdf").exists()


def test_cli_crystal_elements_unknown_exit_2_and_help_states_units(tiny_cond_ckpt, tmp_path, capsys):
    code = main([f"ckpt={tiny_cond_ckpt}", "domain=crystal", "n=2", f"out={tmp_path}/x", "condition.elements=[Li,Qq]", "progress=false"])
    assert code == 2 and capsys.readouterr().err.strip() == "error: condition.elements: unknown element 'Qq'"
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for key, info in CONDITION_KEYS.items():
        assert key in help_text and info.unit in help_text
    assert "condition.KEY" in help_text and "guidance.KEY" in help_text and "allow_extrapolation" in help_text


@pytest.mark.slow
def test_the_conditional_experiment_trains_and_samples_a_request(data_dir, cache_dir, tmp_path):
    """experiment=qm9_mp20_cond_cpu trains both stages for 2 steps; its checkpoint holds the statistics and serves requests."""
    from test_train import TINY_ATOMS, _train

    out = tmp_path / "cond"
    tiny = [a if not a.startswith("data.datasets=") else "data.datasets=[{name:qm9,limit:400,edm_half:B},{name:mp20,limit:120}]" for a in TINY_ATOMS]
    res = _train(["experiment=qm9_mp20_cond_cpu", *tiny, "trainer.max_steps=2", "test=false", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = out / "dit" / "checkpoints" / "last.ckpt"
    stats = load_checkpoint(ckpt)[CONDITION_STATS_KEY]
    assert set(stats) == {"alpha", "gap", "homo", "lumo", "mu", "Cv", "spacegroup", "formation_energy", "band_gap", "elements"}
    gen = load_generator(ckpt)
    mols = gen.generate("molecule", n=3, condition={"gap": stats["gap"]["mean"], "Cv": stats["Cv"]["mean"]}, **FAST)
    assert all(json.loads(m.GetProp("request")) == {"Cv": stats["Cv"]["mean"], "gap": stats["gap"]["mean"]} for m in mols)
    sets = gen.generate_token_sets("crystal", n=2, condition={"spacegroup": stats["spacegroup"]["seen"][0]}, guidance={"spacegroup": 2.0}, **FAST)
    assert len(sets) == 2


def test_api_structures_keep_their_request_through_export(gen, tmp_path):
    sg = gen.condition_stats["spacegroup"]["seen"][0]
    structures = gen.generate("crystal", n=3, seed=1, condition={"spacegroup": sg}, **FAST)
    expected = request_json({"spacegroup": sg})
    assert all(s is None or s.properties["request"] == expected for s in structures)
    gen.export([s for s in structures if s is not None], tmp_path / "x")
    manifest = pd.read_csv(tmp_path / "x" / MANIFEST, sep="\t", dtype=str, keep_default_na=False)
    assert set(manifest["request"]) == {expected}
    unconditional = gen.generate_token_sets("crystal", n=2, seed=1, **FAST)
    gen.export(unconditional, tmp_path / "u")
    assert set(pd.read_csv(tmp_path / "u" / MANIFEST, sep="\t", dtype=str)["request"]) == {"{}"}
    assert "_scidit_request" not in "".join(p.read_text() for p in (tmp_path / "u").glob("*.cif"))
