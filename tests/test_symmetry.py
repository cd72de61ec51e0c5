"""Crystals by symmetry: asymmetric units of real MP-20 crystals expand back to them, special positions
are exact projections, and a model trained on asymmetric units samples crystals in the requested group."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Element, Lattice, Structure

from conftest import TINY_DIT, TINY_VAE
from sciDiT.data import load_cdvae
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.conditional import detect_spacegroup
from sciDiT.evaluation.io import read_manifest
from sciDiT.generate import load_generator
from sciDiT.tokenizers.crystal import CrystalTokenizer
from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity
from sciDiT.tokenizers.symmetry import (asymmetric_token_set, asymmetric_unit, expand, expand_token_set, multiplicities, operations,
                                        orbit, site_projection, spacegroup_number, standard_hall_number, symmetric_lattice)
from sciDiT.training.datamodule import TokenSetDataModule

FM3M = standard_hall_number(225)


@pytest.fixture(scope="module")
def crystals(data_dir, cache_dir):
    data = load_cdvae("mp20", "train", data_dir, cache_dir, limit=40, workers=1)
    tok = CrystalTokenizer()
    return [tok.to_structure(data[i]) for i in range(len(data))], data.meta_column("spacegroup")


def test_asymmetric_units_of_real_crystals_expand_back_to_them(crystals):
    structures, groups = crystals
    matcher = StructureMatcher()
    for structure, group in zip(structures, groups):
        hall, unit = asymmetric_unit(structure)
        assert len(unit) <= len(structure) and spacegroup_number(hall) == group and hall == standard_hall_number(group)
        full, dropped = expand(hall, np.array([*unit.lattice.abc, *unit.lattice.angles]), np.array(unit.atomic_numbers), unit.frac_coords)
        assert dropped == 0 and matcher.fit(structure, full), structure.composition
        assert detect_spacegroup(full, 0.01) == group  # exact symmetry, at the strict tolerance
        mult = multiplicities(hall, np.array([*unit.lattice.abc, *unit.lattice.angles]), unit.frac_coords)
        assert mult.sum() == len(full) and full.composition == sum((Composition({Element.from_Z(z): int(m)}) for z, m in zip(unit.atomic_numbers, mult)), Composition())


def test_token_sets_round_trip_through_the_asymmetric_unit(crystals, data_dir, cache_dir):
    data = load_cdvae("mp20", "train", data_dir, cache_dir, limit=40, workers=1)
    units = load_cdvae("mp20", "train", data_dir, cache_dir, limit=40, workers=1, asymmetric_unit=True)
    assert len(units) == len(data) and units.meta_column("material_id") == data.meta_column("material_id")
    tok, matcher = CrystalTokenizer(), StructureMatcher()
    for i in range(0, len(data), 7):
        assert asymmetric_token_set(data[i]).num_tokens == units[i].num_tokens
        back = expand_token_set(units[i], units[i].meta["hall_number"])
        assert matcher.fit(tok.to_structure(data[i]), tok.to_structure(back))


def test_site_projection_finds_special_positions_exactly():
    rot, trans = operations(FM3M)
    matrix = Lattice.cubic(5.0).matrix
    # near the origin (4a, site symmetry m-3m): the origin itself, 4 atoms per conventional cell
    x = site_projection(np.array([0.02, 0.01, 0.99]), matrix, rot, trans)
    assert np.allclose(np.minimum(x, 1 - x), 0.0, atol=1e-12) and len(orbit(x, rot, trans)) == 4
    # near (1/4, 1/4, 1/4) (8c): exactly there, 8 atoms
    x = site_projection(np.array([0.26, 0.24, 0.255]), matrix, rot, trans)
    assert np.allclose(x, 0.25, atol=1e-12) and len(orbit(x, rot, trans)) == 8
    # a general position (192l), far from every symmetry element in a large cell, stays put
    x0 = np.array([0.11, 0.19, 0.37])
    assert np.allclose(site_projection(x0, Lattice.cubic(20.0).matrix, rot, trans), x0) and len(orbit(x0, rot, trans)) == 192


def test_rock_salt_from_two_atoms_and_a_group():
    salt, dropped = expand(FM3M, np.array([5.6, 5.7, 5.5, 90.5, 89.0, 90.0]), np.array([11, 17]), np.array([[0.01, 0.0, 0.99], [0.49, 0.51, 0.5]]))
    assert dropped == 0
    ref = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert len(salt) == 8 and StructureMatcher().fit(salt, ref) and detect_spacegroup(salt, 0.01) == 225
    assert salt.lattice.abc == pytest.approx((5.6, 5.6, 5.6)) and salt.lattice.angles == pytest.approx((90, 90, 90))


def test_two_atoms_on_one_special_position_keep_the_first():
    """Na and K both decoded next to the origin: one site, so K is dropped (and counted); a general neighbour stays."""
    cell, dropped = expand(FM3M, np.array([5.6] * 3 + [90.0] * 3), np.array([11, 19, 17]),
                           np.array([[0.01, 0.0, 0.0], [0.0, 0.02, 0.99], [0.49, 0.51, 0.5]]))
    assert dropped == 1 and cell.composition.reduced_formula == "NaCl" and len(cell) == 8
    ts = expand_token_set(CrystalTokenizer().from_structure(Structure(Lattice.cubic(5.6), ["Na", "K"], [[0.01, 0, 0], [0, 0.02, 0.99]])), FM3M)
    assert ts.meta["shared_sites"] == 1 and ts.num_tokens == 4


@pytest.mark.parametrize("number, want", [(1, (3, 4, 5, 80, 85, 95)), (14, (3, 4, 5, 90, 85, 90)), (62, (3, 4, 5, 90, 90, 90)),
                                          (139, (3.5, 3.5, 5, 90, 90, 90)), (166, (3.5, 3.5, 5, 90, 90, 120)), (227, (4, 4, 4, 90, 90, 90))])
def test_symmetric_lattice_takes_the_metric_of_the_crystal_system(number, want):
    assert symmetric_lattice(np.array([3.0, 4.0, 5.0, 80.0, 85.0, 95.0]), number) == pytest.approx(np.array(want))


def test_bad_settings_and_datasets_are_one_line_errors(data_dir, cache_dir):
    with pytest.raises(SciDiTInputError, match="not in 1..230"):
        standard_hall_number(231)
    with pytest.raises(SciDiTInputError, match="asymmetric_unit applies to crystal datasets only"):
        TokenSetDataModule([{"name": "qm9", "asymmetric_unit": True}])
    with pytest.raises(SciDiTInputError, match="need the spacegroup condition"):
        TokenSetDataModule([{"name": "mp20", "asymmetric_unit": True}], conditions=["band_gap"])


@pytest.fixture(scope="module")
def asym_gen(data_dir, cache_dir, tmp_path_factory):
    """A generator of an untrained DiT on asymmetric units, conditioned on the space group."""
    from sciDiT.data.conditions import dit_condition_spec
    from sciDiT.training.dit_module import DiTModule

    torch.manual_seed(2)
    dm = TokenSetDataModule([{"name": "mp20", "limit": 60, "asymmetric_unit": True}], data_dir=str(data_dir), cache_dir=str(cache_dir),
                            batch_size=16, parse_workers=1, conditions=["spacegroup"])
    conditions = {"domain": {"kind": "class", "num_classes": 3}, "spacegroup": {**dit_condition_spec("spacegroup"), "dropout": 0.1}}
    module = DiTModule(vae=TINY_VAE, dit={**TINY_DIT, "conditions": conditions})
    module.condition_stats = dm.condition_stats()
    module.model.prepare(list(dm.train_dataloader())[:2], dm.atom_count_histogram(), dm.element_count_histogram())
    module.ema.module.load_state_dict(module.model.dit.state_dict())
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("asym_ckpt") / "last.ckpt"
    torch.save(checkpoint, path)
    return load_generator(str(path))


def test_an_asymmetric_unit_model_samples_crystals_in_the_requested_group(asym_gen):
    assert asym_gen.condition_stats["spacegroup"]["asymmetric_unit"]
    tok = CrystalTokenizer()
    sets = asym_gen.generate_token_sets("crystal", n=4, num_atoms=1, steps=2, progress=False, condition={"spacegroup": 225},
                                        allow_extrapolation=True)
    for ts in sets:  # one atom per asymmetric unit: an orbit of Fm-3m (4, 8, 24, 32, 48, 96 or 192 atoms)
        assert ts.num_tokens in (4, 8, 24, 32, 48, 96, 192) and ts.meta["hall_number"] == FM3M
        assert detect_spacegroup(tok.to_structure(ts), 0.01) in (225, 221, 229)  # one orbit may have a supergroup's symmetry
    with pytest.raises(SciDiTInputError, match="request a space group"):
        asym_gen.generate_token_sets("crystal", n=1, steps=2, progress=False)
    argmax = asym_gen.generate_token_sets("crystal", n=4, num_atoms=3, steps=2, progress=False, condition={"spacegroup": 225},
                                          allow_extrapolation=True)
    balanced = asym_gen.generate_token_sets("crystal", n=4, num_atoms=3, steps=2, progress=False, condition={"spacegroup": 225},
                                            allow_extrapolation=True, composition="balanced")
    for a, b in zip(argmax, balanced):  # the whole cell's composition is balanced (or the argmax kept where none is found)
        assert torch.equal(a.frac, b.frac) and (smact_validity(*reduced_counts(b.types.tolist())) or torch.equal(a.types, b.types))
    with pytest.raises(SciDiTInputError, match="use composition=argmax"):
        asym_gen.generate_token_sets("crystal", n=1, steps=2, progress=False, condition={"spacegroup": 225}, composition="coherent",
                                     allow_extrapolation=True)


def test_the_spacegroup_experiment_trains_and_samples_by_cli(data_dir, cache_dir, tmp_path, capsys):
    """experiment=mp20_spacegroup_cpu trains both stages for 2 steps on asymmetric units; the CLI writes crystals in the requested group."""
    from test_train import TINY_ATOMS, _train

    from sciDiT.sample import main

    out = tmp_path / "sg"
    tiny = [a if not a.startswith("data.datasets=") else "data.datasets=[{name:mp20,limit:120,asymmetric_unit:true}]" for a in TINY_ATOMS]
    res = _train(["experiment=mp20_spacegroup_cpu", *tiny, "trainer.max_steps=2", "test=false", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = str(out / "dit" / "checkpoints" / "last.ckpt")
    group = load_generator(ckpt).condition_stats["spacegroup"]["seen"][-1]
    assert main([f"ckpt={ckpt}", "domain=crystal", "n=3", "steps=2", "progress=false", f"out={tmp_path / 'x'}", f"condition.spacegroup={group}"]) == 0
    assert main([f"ckpt={ckpt}", "domain=crystal", "n=1", "steps=2", f"out={tmp_path / 'y'}"]) == 2
    assert "request a space group" in capsys.readouterr().err
    manifest = read_manifest(tmp_path / "x")
    assert len(manifest) == 3 and all(json.loads(r) == {"spacegroup": group} for r in manifest["request"])


def test_the_shipped_spacegroup_model_samples_crystals_in_the_requested_group():
    gen = load_generator("mp20_spacegroup_cpu")
    assert gen.condition_stats["spacegroup"]["asymmetric_unit"]
    tok = CrystalTokenizer()
    for group in (225, 194):
        sets = gen.generate_token_sets("crystal", n=3, steps=20, progress=False, condition={"spacegroup": group})
        assert [detect_spacegroup(tok.to_structure(ts), 0.01) for ts in sets] == [group] * 3


def test_the_shipped_spacegroup_and_composition_model_takes_both_requests():
    """pretrained=mp20_spacegroup_cond_cpu: a space group and an element set at once; with composition=requested every
    crystal holds the group and exactly the elements, its whole-cell composition charge balanced where one was found."""
    gen = load_generator("mp20_spacegroup_cond_cpu")
    assert {"spacegroup", "elements", "formation_energy", "band_gap"} <= set(gen.condition_stats)
    tok = CrystalTokenizer()
    sets = gen.generate_token_sets("crystal", n=4, steps=20, progress=False, condition={"spacegroup": 62, "elements": ["K", "N", "O"]},
                                   composition="requested", bf16=False)  # fp32: the same samples on every CPU
    for ts in sets:
        assert detect_spacegroup(tok.to_structure(ts), 0.01) == 62 and set(ts.types.tolist()) == {19, 7, 8}
    assert sum(smact_validity(*reduced_counts(ts.types.tolist())) for ts in sets) >= 3
