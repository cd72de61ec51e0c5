"""Composition-first crystals: composition requests (parsing, exact decoding), the composition model (sampling rules,
training, its file) and drawing each crystal's composition before its structure (API and CLI)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sciDiT.batch import Domain
from sciDiT.data.conditions import ConditionedDataset, composition_numbers, validate_request
from sciDiT.errors import SciDiTInputError
from sciDiT.export import MANIFEST
from sciDiT.generate import load_generator
from sciDiT.models.composition import counted_types
from sciDiT.models.composition_model import CompositionModel
from sciDiT.sample import main
from sciDiT.tokenizers.elements import element_features, formula
from sciDiT.training.composition_model import load_composition_model, mean_nll, save_composition_model, train_composition_model

FAST = {"steps": 3, "progress": False}


# -- requests --------------------------------------------------------------------------------------


def test_formulas_round_trip_through_atomic_numbers():
    assert composition_numbers("LiFePO4") == [3, 8, 8, 8, 8, 15, 26]
    assert formula(composition_numbers("Li4Fe4P4O16")) == "Li4Fe4P4O16"
    assert formula(composition_numbers(["O", "Na", "Cl", "O"])) == "NaClO2"
    for text in ("NaCl", "Fe11O12", "SrTiO3", "Ba2YCu3O7"):
        assert composition_numbers(formula(composition_numbers(text))) == composition_numbers(text)


@pytest.mark.parametrize("value, message", [
    ("Li0.5O", "must give each element a positive integer count"),
    ("Xx2O", "unknown element 'Xx'"),
    ("", "must be a formula with integer counts"),
    (3, "must be a formula with integer counts"),
])
def test_bad_compositions_are_one_line_errors(value, message):
    with pytest.raises(SciDiTInputError) as err:
        composition_numbers(value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_training_sets_carry_their_composition(data_dir, cache_dir):
    from sciDiT.data import load_cdvae

    data = load_cdvae("mp20", "train", data_dir=data_dir, cache_dir=cache_dir, limit=20, workers=1)
    sets = ConditionedDataset(data, {}, ["composition", "elements"])
    for i in range(len(data)):
        condition = sets[i].meta["condition"]
        assert condition["composition"] == sorted(data[i].types.tolist())
        assert condition["elements"] == sorted(set(data[i].types.tolist()))


# -- exact decoding of a composition -----------------------------------------------------------------


def test_counted_types_use_exactly_the_counts_at_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.randn(3, 5, 6, generator=gen).log_softmax(-1)  # [B, N, T]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    counts = torch.zeros(3, 6, dtype=torch.long)
    counts[0, [1, 2, 4]] = torch.tensor([2, 2, 1])
    counts[1, [3, 5]] = torch.tensor([1, 3])
    counts[2, [1]] = 3
    types = counted_types(log_probs, mask, counts)
    for b in range(3):
        n = int(mask[b].sum())
        assert torch.equal(torch.bincount(types[b, :n], minlength=6), counts[b]) and (types[b, n:] == 0).all()
        atoms = torch.repeat_interleave(torch.arange(6), counts[b]).tolist()
        best = max(sum(log_probs[b, i, z] for i, z in enumerate(p)) for p in set(itertools.permutations(atoms)))
        assert float(sum(log_probs[b, i, types[b, i]] for i in range(n))) == pytest.approx(float(best), abs=1e-5)
    perm = torch.tensor([4, 2, 0, 3, 1])
    assert torch.equal(counted_types(log_probs[:1, perm], mask[:1], counts[:1]), types[:1, perm])
    with pytest.raises(ValueError, match="another number of atoms"):
        counted_types(log_probs, mask, counts.flip(0))


# -- the composition model ---------------------------------------------------------------------------


def test_samples_are_sorted_sized_by_the_histogram_and_each_row_its_own():
    torch.manual_seed(0)
    model = CompositionModel(num_types=10, max_atoms=4, hidden_size=32, depth=1, num_heads=2).eval()
    model.fit_support([[1, 2]] * 30 + [[3, 3, 4, 5]] * 10)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)  # an untrained model has a flat head: give it preferences
    assert model.size_log_probs().exp().tolist() == pytest.approx([0, 1 / 44, 31 / 44, 1 / 44, 11 / 44])  # add-one smoothed
    u = torch.rand(2000, 5, generator=torch.Generator().manual_seed(1))
    comps = model.sample(u)
    assert all(1 <= len(c) <= 4 and c == sorted(c) and set(c) <= {1, 2, 3, 4, 5} for c in comps)  # only ids of the training sets
    assert np.mean([len(c) == 2 for c in comps]) == pytest.approx(31 / 44, abs=0.03)
    assert len({tuple(c) for c in comps}) > 10
    assert model.sample(u[10:13]) == comps[10:13]  # a row's composition does not depend on the batch
    cold = model.sample(u, temperature=1e-4)  # near zero: each id the most probable allowed one, the size still drawn
    assert [len(c) for c in cold] == [len(c) for c in comps] and len({tuple(c) for c in cold if len(c) == 2}) == 1
    nll = model.nll([[1, 2], [3, 3, 4, 5]])
    assert torch.allclose(nll - model.nll([[1, 2], [3, 3, 4, 5]], with_size=False), -model.size_log_probs()[[2, 4]])


def test_training_fits_the_data_and_the_file_round_trips(tmp_path):
    train = [[3, 8]] * 30 + [[11, 17]] * 10 + [[3, 3, 8]] * 10  # of two atoms, LiO three times as often as NaCl
    model, info = train_composition_model(train, train, num_types=20, size="CM-S", batch_size=32, lr=3e-3, steps=120, minutes=5)
    exact = -(0.6 * np.log(0.6 * 0.75) + 0.2 * np.log(0.6 * 0.25) + 0.2 * np.log(0.2))  # the data's entropy per composition
    smoothing = -np.log(np.array([51 / 53, 11 / 53])) + np.log([0.8, 0.2])  # p(n) is add-one smoothed over sizes 1..3
    assert info["steps"] == 120 and info["val_nll"] == pytest.approx(exact + 0.8 * smoothing[0] + 0.2 * smoothing[1], abs=0.05)
    comps = model.sample(torch.rand(500, model.max_atoms + 1, generator=torch.Generator().manual_seed(0)))
    pairs = [c for c in comps if len(c) == 2]
    assert sum(c in ([3, 8], [11, 17], [3, 3, 8]) for c in comps) >= 480 and 0.65 < np.mean([c == [3, 8] for c in pairs]) < 0.85
    more, facts = train_composition_model(train, train, num_types=20, batch_size=32, lr=1e-3, steps=10, minutes=5, init=model)
    assert more is model and facts["steps"] == 10 and facts["val_nll"] < info["val_nll"] + 0.05  # continued, not restarted
    with pytest.raises(SciDiTInputError, match="needs 30 and 3"):
        train_composition_model(train, train, num_types=30, steps=1, init=model)
    path = save_composition_model(tmp_path / "cm.pt", model, info)
    loaded, facts = load_composition_model(path)
    assert facts["steps"] == 120 and mean_nll(loaded, train) == pytest.approx(mean_nll(model, train), rel=1e-5)
    torch.save({"kind": "something_else"}, tmp_path / "other.pt")
    with pytest.raises(SciDiTInputError, match="not a composition model file"):
        load_composition_model(tmp_path / "other.pt")


def test_element_features_mark_chemistry_and_enter_the_model_and_its_file(tmp_path):
    feats = element_features()
    names = dict(zip(range(-4, 9), range(29, 42)))  # oxidation state -> column
    assert feats.shape == (119, 45) and not feats[0].any()
    oxygen, iron = feats[8], feats[26]
    assert oxygen[1] == 1 and oxygen[7 + 15] == 1 and oxygen[25 + 1] == 1 and oxygen[names[-2]] == 1 and oxygen[29:42].sum() == 1
    assert iron[3] == 1 and iron[7 + 7] == 1 and iron[25 + 2] == 1 and iron[[names[2], names[3]]].tolist() == [1, 1] and iron[44] == 1
    assert oxygen[42] == pytest.approx(3.44 / 4) and oxygen[44] == 0
    train = [[3, 8]] * 20 + [[11, 17]] * 20
    model, info = train_composition_model(train, train, num_types=20, batch_size=16, steps=20, minutes=5,
                                          type_features=feats[:20])
    assert info["num_features"] == 45 and torch.equal(model.type_features[:20], torch.as_tensor(feats[:20]))
    loaded, _ = load_composition_model(save_composition_model(tmp_path / "cm.pt", model, info))
    assert torch.equal(loaded.type_features, model.type_features) and mean_nll(loaded, train) == pytest.approx(mean_nll(model, train), rel=1e-5)
    inputs, _, size = loaded.encode([[3, 8]])
    before = loaded(inputs, size)[0, 1]  # [T] the logits after Li
    loaded.set_type_features(torch.as_tensor(feats[:20]).index_copy(0, torch.tensor([3]), torch.as_tensor(feats[[11]])))  # Li as Na
    assert not torch.allclose(loaded(inputs, size)[0, 1], before)
    with pytest.raises(ValueError, match="shape"):
        loaded.set_type_features(torch.zeros(20, 3))


@pytest.fixture(scope="module")
def substitution():
    from sciDiT.tokenizers.substitution import IonicSubstitution

    return IonicSubstitution()


def test_ionic_substitutes_replace_one_element_at_its_oxidation_state(substitution):
    from pymatgen.core import Element

    assert substitution.assignment(composition_numbers("LiFePO4")) == {3: 1, 8: -2, 15: 5, 26: 2}
    assert substitution.assignment(composition_numbers("Fe3Al")) is None and substitution(composition_numbers("Fe3Al"), None) == [13, 26, 26, 26]
    rng = np.random.default_rng(0)
    for text in ["Li4Fe4P4O16", "NaCl", "BaTiO3", "La2CuO4", "Cs2AgBiBr6"]:
        old = composition_numbers(text)
        states = substitution.assignment(old)
        for _ in range(5):
            new = substitution(old, rng)
            gone, came = set(old) - set(new), set(new) - set(old)
            assert len(gone) == 1 and len(came) == 1 and new == sorted(new)
            (z_old,), (z_new,) = gone, came
            assert new.count(z_new) == old.count(z_old) and states[z_old] in Element.from_Z(z_new).oxidation_states
            assert sum(states.get(z, states[z_old]) for z in new) == 0  # neutral under the same states
    again = [substitution(composition_numbers("BaTiO3"), np.random.default_rng(1)) for _ in range(2)]
    assert again[0] == again[1]


def test_training_on_augmented_compositions_learns_them():
    train = [[3, 8]] * 39 + [[11, 17]]  # sampling draws only elements of the training cells
    model, info = train_composition_model(train, train, num_types=20, batch_size=32, lr=3e-3, steps=120, minutes=5,
                                          augment=lambda c, rng: [11, 17], augment_share=0.5)
    comps = model.sample(torch.rand(400, model.max_atoms + 1, generator=torch.Generator().manual_seed(0)))
    assert info["augment_share"] == 0.5 and 0.35 < np.mean([c == [11, 17] for c in comps]) < 0.65
    with pytest.raises(SciDiTInputError, match="needs an augment function"):
        train_composition_model(train, train, num_types=20, steps=1, augment_share=0.5)


def test_species_label_each_element_with_one_state_and_round_trip():
    from sciDiT.tokenizers.species import SpeciesVocabulary, oxidation_labels

    vocab = SpeciesVocabulary()
    charges, elements = vocab.charges(), vocab.elements()
    assert oxidation_labels(composition_numbers("LiFePO4")) == {3: 1, 8: -2, 15: 5, 26: 2}  # common states first
    assert oxidation_labels(composition_numbers("Fe3Al")) == {13: 0, 26: 0} and oxidation_labels([14, 14]) == {14: 0}  # alloy, element
    assert oxidation_labels(composition_numbers("NaCl2")) == {11: 0, 17: 0}  # no neutral assignment: as an alloy
    assert oxidation_labels(composition_numbers("NaCl2"), "first") == {11: 1, 17: -1}  # or first states, charge left
    vocab_first = SpeciesVocabulary("first")
    for text in ["Li4Fe4P4O16", "NaCl", "Cs2AgBiBr6", "Fe3Al", "La2CuO4", "NaCl2"]:
        types = composition_numbers(text)
        ids = vocab.encode(types)
        assert vocab.decode(ids) == sorted(types) and ids == sorted(ids)  # round trip; sorted ids keep elements together
        assert len({i for i in ids}) == len(set(types)) and elements[ids].tolist() == sorted(types)  # one state per element
        assert charges[ids].sum() == 0 and (charges[vocab_first.encode(types)].sum() == 0) == (text != "NaCl2")
    feats = vocab.features()
    assert feats.shape == (len(vocab), 58) and np.array_equal(feats[:, :45], element_features()[elements])
    assert np.array_equal(feats[:, 45:].argmax(1)[1:] - 4, charges[1:]) and not feats[0].any()


def test_charged_ids_embed_their_running_charge_and_draw_one_id_per_type(tmp_path):
    # ids 1, 2: type 1 at charge +1 / +2; id 3: type 2 at -1. The data: cells of a +1 or a +2 cation, always neutral
    charges, types = torch.tensor([0, 1, 2, -1]), torch.tensor([0, 1, 1, 2])
    train = [[1, 3]] * 20 + [[1, 1, 3, 3]] * 20 + [[2, 3, 3]] * 20 + [[2, 2, 3, 3, 3, 3]] * 20
    model, info = train_composition_model(train, train, num_types=4, batch_size=32, lr=3e-3, steps=150, minutes=5,
                                          charges=(charges.numpy(), types.numpy()), max_charge=4)
    assert info["max_charge"] == 4 and torch.equal(model.type_charge[:4], charges)
    draws = model.sample(torch.rand(400, model.max_atoms + 1, generator=torch.Generator().manual_seed(0)))
    assert all(set(c) <= {1, 2} for c in draws)  # the types, never ids
    model.type_of.copy_(torch.arange(4))  # ids as their own types: see which ids were drawn
    raw = model.sample(torch.rand(400, model.max_atoms + 1, generator=torch.Generator().manual_seed(0)))
    assert not any(1 in c and 2 in c for c in raw)  # one id per type within a set, always
    assert np.mean([int(charges[c].sum()) == 0 for c in raw]) > 0.9  # learned: the charge closes
    loaded, _ = load_composition_model(save_composition_model(tmp_path / "cm.pt", model, info))
    assert torch.equal(loaded.type_charge, model.type_charge) and mean_nll(loaded, train) == pytest.approx(mean_nll(model, train), rel=1e-5)
    inputs, _, size = loaded.encode([[1, 3]])
    before = loaded(inputs, size)[0, 1]  # [T] the logits after id 1
    loaded.set_type_charges(torch.tensor([0, 2, 2, -1]), types)  # id 1 now +2
    assert not torch.allclose(loaded(inputs, size)[0, 1], before)
    with pytest.raises(ValueError, match="max_charge"):
        CompositionModel(num_types=4, max_atoms=4).set_type_charges(torch.zeros(4), torch.zeros(4))


# -- generation: a requested composition, and composition first ----------------------------------------


@pytest.fixture(scope="module")
def gen(tiny_cond_ckpt):
    return load_generator(tiny_cond_ckpt)


@pytest.fixture(scope="module")
def composition_file(tmp_path_factory, gen) -> str:
    seen = gen.condition_stats["composition"]["seen"]
    train = [[seen[0], seen[-1]], [seen[1]] * 2 + [seen[-1]] * 3, [seen[2]] * 4]
    model, info = train_composition_model(train * 10, train, num_types=119, batch_size=16, steps=40, minutes=5)
    return str(save_composition_model(tmp_path_factory.mktemp("cm") / "cm.pt", model, info))


def test_a_requested_composition_fixes_the_atoms_and_is_enforced_by_default(gen):
    request = {"composition": "Li2Fe2O4"}
    free = gen.generate_token_sets("crystal", n=4, seed=0, condition=request, composition="argmax", **FAST)
    exact = gen.generate_token_sets("crystal", n=4, seed=0, condition=request, **FAST)  # auto: enforced
    assert all(ts.num_tokens == 8 for ts in free + exact)
    assert all(sorted(ts.types.tolist()) == composition_numbers("Li2Fe2O4") for ts in exact)
    assert any(sorted(ts.types.tolist()) != composition_numbers("Li2Fe2O4") for ts in free)  # an untrained DiT's conditioning alone misses
    for a, b in zip(free, exact):
        assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)  # only the types change
    assert json.loads(exact[0].meta["request"]) == {"composition": "Li2Fe2O4"}
    assert validate_request({"composition": "O4Fe2Li2"}, Domain.CRYSTAL, gen.condition_stats) == request
    for extra, message in [({"num_atoms": 8}, "give no condition.elements, num_atoms"),
                           ({"condition": {**request, "elements": ["Li"]}}, "give no condition.elements")]:
        with pytest.raises(SciDiTInputError, match=message):
            gen.generate_token_sets("crystal", n=2, **{"condition": request, **extra}, **FAST)


def test_composition_first_draws_each_crystals_composition_then_its_structure(tiny_cond_ckpt, composition_file):
    gen = load_generator(tiny_cond_ckpt, composition_model=composition_file)
    sets = gen.generate_token_sets("crystal", n=6, seed=3, composition_first=True, composition="requested", **FAST)
    for ts in sets:
        asked = json.loads(ts.meta["request"])["composition"]
        assert sorted(ts.types.tolist()) == composition_numbers(asked)
    first = gen.generate_token_sets("crystal", n=2, seed=3, composition_first=True, composition="requested", **FAST)
    assert [ts.meta["request"] for ts in first] == [ts.meta["request"] for ts in sets[:2]]  # sample i's draw is its own
    default = gen.generate_token_sets("crystal", n=6, seed=3, **FAST)  # auto: a model with a composition model draws first, and enforces
    assert all(torch.equal(a.types, b.types) and torch.equal(a.frac, b.frac) for a, b in zip(default, sets))
    conditioned = gen.generate_token_sets("crystal", n=6, seed=3, composition="argmax", **FAST)  # the DiT's conditioning alone
    assert all(torch.equal(a.frac, b.frac) for a, b in zip(conditioned, sets))
    assert any(sorted(ts.types.tolist()) != composition_numbers(json.loads(ts.meta["request"])["composition"]) for ts in conditioned)
    plain = gen.generate_token_sets("crystal", n=2, seed=3, composition_first=False, **FAST)
    assert all("request" not in ts.meta for ts in plain)
    given = gen.generate_token_sets("crystal", n=2, seed=3, compositions=[json.loads(ts.meta["request"])["composition"] for ts in first],
                                    composition="requested", **FAST)
    assert [ts.meta["request"] for ts in given] == [ts.meta["request"] for ts in first]
    assert all(sorted(a.types.tolist()) == sorted(b.types.tolist()) for a, b in zip(given, first))
    for kwargs, message in [({"composition_first": True, "condition": {"composition": "NaCl"}}, "request none"),
                            ({"composition_first": True, "compositions": ["NaCl", "KCl"]}, "not both"),
                            ({"compositions": ["NaCl"]}, "a list of n=2 formulas"),
                            ({"compositions": ["NaCl", "Na0.5Cl"]}, "positive integer count"),
                            ({"composition_temperature": 0.0}, "composition_temperature must be a finite number > 0")]:
        with pytest.raises(SciDiTInputError, match=message):
            gen.generate_token_sets("crystal", n=2, **kwargs, **FAST)
    with pytest.raises(SciDiTInputError, match="draws compositions from a composition model"):
        load_generator(tiny_cond_ckpt).generate_token_sets("crystal", n=2, composition_first=True, **FAST)


def test_a_packed_composition_model_samples_as_its_file(tiny_cond_ckpt, composition_file, tmp_path):
    from sciDiT.pretrained import export_pretrained

    packed = export_pretrained(tiny_cond_ckpt, tmp_path / "packed.pt", composition_model=composition_file)
    model, _ = load_composition_model(composition_file)
    entry = torch.load(packed, weights_only=True)["composition_model"]["state_dict"]
    buffers = {name for name, _ in model.named_buffers()}  # the size histogram, the seen ids: exact
    assert buffers and all(torch.equal(entry[k], v if k in buffers else v.to(torch.bfloat16)) for k, v in model.state_dict().items())
    kwargs = {"n": 4, "seed": 5, "composition_first": True, "composition": "requested", **FAST}
    from_file = load_generator(tiny_cond_ckpt, composition_model=composition_file).generate_token_sets("crystal", **kwargs)
    from_pack = load_generator(packed).generate_token_sets("crystal", **kwargs)
    assert [ts.meta["request"] for ts in from_pack] == [ts.meta["request"] for ts in from_file]
    again = export_pretrained(packed, tmp_path / "again.pt")  # a re-export keeps the packed section
    assert load_generator(again).composition_model is not None


def test_cli_composition_first_writes_each_request_and_bad_files_exit_2(tiny_cond_ckpt, composition_file, tmp_path, capsys):
    out = tmp_path / "xtals"
    assert main([f"ckpt={tiny_cond_ckpt}", f"composition_model={composition_file}", "composition_first=true", "composition=requested",
                 "domain=crystal", "n=3", "steps=2", "progress=false", f"out={out}"]) == 0
    rows = pd.read_csv(out / MANIFEST, sep="\t")
    assert len(rows) == 3 and [json.loads(r)["composition"] for r in rows["request"]] == rows["formula"].tolist()  # written as asked
    assert main([f"ckpt={tiny_cond_ckpt}", f"composition_model={tiny_cond_ckpt}", "composition_first=true", "domain=crystal", "n=2",
                 f"out={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not a composition model file" in err[-1] and not (tmp_path / "bad").exists()


def test_the_shipped_composition_first_model_draws_compositions_and_decodes_them(tmp_path):
    from sciDiT.pretrained import available, pretrained_path
    from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity

    assert "mp20_composition_cpu" in available()
    assert pretrained_path("mp20_composition_cpu").with_suffix(".md").read_text().startswith("# Model card")
    gen = load_generator("mp20_composition_cpu")
    assert gen.composition_model is not None and gen.crystal_refiner is not None
    sets = gen.generate_token_sets("crystal", n=40, seed=0, **FAST)  # auto: composition first, exact atoms, refined
    asked = [composition_numbers(json.loads(ts.meta["request"])["composition"]) for ts in sets]
    assert all(sorted(ts.types.tolist()) == a and ts.meta["structure_source"] == "refined" for ts, a in zip(sets, asked))
    assert np.mean([smact_validity(*reduced_counts(a)) for a in asked]) > 0.6  # the model card: 84.5% over 1,000
    assert main(["pretrained=mp20_composition_cpu", "domain=crystal", "n=2", "steps=3", "progress=false", "condition.composition=NaCl",
                 f"out={tmp_path / 'nacl'}"]) == 0
    rows = pd.read_csv(tmp_path / "nacl" / MANIFEST, sep="\t")
    assert all(composition_numbers(f) == [11, 17] for f in rows["formula"]) and set(rows["request"]) == {'{"composition": "NaCl"}'}
