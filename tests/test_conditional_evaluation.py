"""Conditional evaluation (issue 13): requests read from the files, EDM-protocol MAEs, xTB gaps, space groups, element sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure
from rdkit import Chem

from sciDiT.data.qm9 import edm_property_halves, qm9_split
from sciDiT.evaluate import main
from sciDiT.evaluation.conditional import (
    crystal_condition_metrics,
    detect_spacegroup,
    element_set_hit,
    molecule_condition_metrics,
    parse_request,
    requests_of,
)
from sciDiT.evaluation.io import read_molecules
from sciDiT.evaluation.property_predictor import AtomCountBaseline, PropertyPredictor, load_predictor, predict, save_predictor
from sciDiT.evaluation.xtb import xtb_gap
from sciDiT.export import MANIFEST, write_cif_folder, write_sdf
from sciDiT.tokenizers import MoleculeTokenizer
from test_eval_molecules import qm9_rows

WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]))


def rock_salt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cesium_chloride() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_edm_halves_are_disjoint_seeded_and_cover_train():
    halves = edm_property_halves(1000)
    train = qm9_split(1000)["train"]
    assert len(np.intersect1d(halves["A"], halves["B"])) == 0
    assert np.array_equal(np.sort(np.concatenate([halves["A"], halves["B"]])), np.sort(train))
    assert len(halves["A"]) == len(train) // 2
    assert np.array_equal(halves["A"], edm_property_halves(1000)["A"])


def test_xtb_gap_of_water_and_open_shell_counted():
    gap, status = xtb_gap(*WATER)
    # GFN2-xTB HOMO-LUMO gap of water at its experimental geometry, 14.63 eV as tblite 0.8 computes it (a regression
    # anchor: a wrong unit, occupation count or method would move it by eV); a pi system has a far smaller gap
    assert status == "ok" and gap == pytest.approx(14.63, abs=0.05)
    ring = np.array([[1.39 * np.cos(k * np.pi / 3), 1.39 * np.sin(k * np.pi / 3), 0.0] for k in range(6)])
    benzene_gap, _ = xtb_gap(np.array([6] * 6 + [1] * 6), np.concatenate([ring, ring * (2.47 / 1.39)]))
    assert 3.0 < benzene_gap < gap - 5.0
    methyl = (np.array([6, 1, 1, 1]), np.array([[0.0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]]))
    assert xtb_gap(*methyl) == (None, "open_shell")


def test_spacegroup_of_rock_salt_and_match_against_base_rate():
    assert detect_spacegroup(rock_salt(), 0.01) == 225 and detect_spacegroup(rock_salt(), 0.1) == 225
    assert detect_spacegroup(cesium_chloride(), 0.01) == 221
    structures = [rock_salt(), rock_salt(), None]  # the third sample has no structure (degenerate lattice): a miss
    requests = [{"spacegroup": 225}, {"spacegroup": 221}, {"spacegroup": 225}]
    unconditional = [rock_salt(), cesium_chloride(), cesium_chloride(), None]  # None: an unconditional sample without a structure
    m = crystal_condition_metrics(structures, ["NaCl", "NaCl", "NaCl"], requests, unconditional=unconditional)
    assert m["spacegroup_match_rate"] == pytest.approx(1 / 3) and m["spacegroup_match_rate_symprec0.1"] == pytest.approx(1 / 3)
    assert m["spacegroup_match_rate_sg225"] == 0.5 and m["spacegroup_match_rate_sg221"] == 0.0
    assert m["spacegroup_base_rate"] == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3) and m["n_unconditional_for_base_rate"] == 4


def test_composition_hits_are_exact_element_sets():
    assert element_set_hit(["Na", "Cl"], ["Cl", "Na"])
    assert not element_set_hit(["Na", "Cl"], ["Na"]) and not element_set_hit(["Na"], ["Na", "Cl"])
    requests = [{"elements": ["Na", "Cl"]}, {"elements": ["Cs", "Cl"]}, {"elements": ["Na", "Cl"]}, {}]
    m = crystal_condition_metrics([rock_salt(), rock_salt(), None, rock_salt()], ["NaCl", "NaCl", "NaCl", "NaCl"], requests)
    assert m["n_requested_elements"] == 3 and m["composition_hit_rate"] == pytest.approx(1 / 3)
    assert m["composition_hit_and_valid_rate"] == pytest.approx(1 / 3)  # rock salt NaCl: valid
    squeezed = rock_salt()
    squeezed.scale_lattice(squeezed.volume / 1000)  # atoms 0.28 A apart: structurally invalid
    invalid = crystal_condition_metrics([squeezed, rock_salt()], ["NaCl", "NaCl2"], [{"elements": ["Na", "Cl"]}] * 2)
    assert invalid["composition_hit_rate"] == 1.0 and invalid["composition_hit_and_valid_rate"] == 0.0  # NaCl2 is not charge balanced
    assert m["n_conditional"] == 3


def test_parse_request_errors():
    assert parse_request('{"gap": 6.5}', "x", ("gap",)) == {"gap": 6.5}
    assert parse_request(None, "x", ("gap",)) == {}
    for text, message in [('{"gapp": 1}', "unknown condition key 'gapp'"), ("[1]", "must be a JSON object"), ("{gap", "not JSON"),
                          ('{"gap": "high"}', "finite number"), ('{"elements": "Li"}', "list of element symbols")]:
        with pytest.raises(ValueError, match=message):
            parse_request(text, "f.sdf#0", ("gap", "elements"))


def _sdf_with_requests(path, sets, requests):
    tok = MoleculeTokenizer()
    mols = []
    for ts, req in zip(sets, requests):
        mol = tok.to_rdkit(ts)
        if req is not None:
            mol.SetProp("request", json.dumps(req, sort_keys=True))
        mols.append(mol)
    return write_sdf(mols, path)


def _flat_predictor(mean: float) -> PropertyPredictor:
    """A SchNet whose last layer is zero: it predicts ``mean`` for every molecule (closed-form MAEs)."""
    model = PropertyPredictor(hidden=8, filters=8, interactions=1, gaussians=5, mean=mean, std=2.0)
    with torch.no_grad():
        model.net.lin2.weight.zero_()
        model.net.lin2.bias.zero_()
    return model


def test_requests_from_sdf_and_closed_form_mae(tmp_path):
    sets, _ = qm9_rows(6)
    sdf = _sdf_with_requests(tmp_path / "s.sdf", sets, [{"gap": 5.0}, {"gap": 7.0}, {"gap": 8.0}, {"alpha": 70.0}, {}, None])
    read = read_molecules(sdf)
    requests = requests_of(read, ("gap", "alpha"))
    assert requests == [{"gap": 5.0}, {"gap": 7.0}, {"gap": 8.0}, {"alpha": 70.0}, {}, {}]
    model = _flat_predictor(6.0)
    assert np.allclose(predict(model, read), 6.0)
    m = molecule_condition_metrics(read, requests, [("gap", model, AtomCountBaseline([5], [1.0], 0.0, 1.0), {"test_mae": 0.4})])
    assert m["n_requested_gap"] == 3 and m["n_unscorable_gap"] == 0
    assert m["mae_gap_mev"] == pytest.approx(1000 * (1 + 1 + 2) / 3)
    assert m["mae_gap_mev_ubound"] == pytest.approx(m["mae_gap_mev"])  # a constant prediction: shuffling changes nothing
    assert m["mae_gap_mev_predictor_qm9_test"] == 0.4 and "mae_alpha_bohr3" not in m  # no alpha predictor given


def test_predictor_checkpoint_round_trip(tmp_path):
    sets, _ = qm9_rows(4)
    torch.manual_seed(0)
    model = PropertyPredictor(hidden=8, filters=8, interactions=1, gaussians=5, mean=1.0, std=3.0)
    hp = {"hidden": 8, "filters": 8, "interactions": 1, "gaussians": 5, "mean": 1.0, "std": 3.0}
    baseline = AtomCountBaseline.fit(np.array([3, 3, 5, 7]), np.array([1.0, 3.0, 10.0, 14.0]))
    assert baseline([3, 5])[0] == 2.0 and baseline([3, 5])[1] == 10.0
    assert baseline([6])[0] == pytest.approx(np.polyval(np.polyfit([3, 3, 5, 7], [1, 3, 10, 14], 1), 6))
    path = save_predictor(tmp_path / "gap.pt", "gap", model, hp, baseline, {"test_mae": 0.3})
    key, loaded, base, info = load_predictor(path)
    assert key == "gap" and info == {"test_mae": 0.3} and base.table == baseline.table
    assert np.allclose(predict(loaded, sets), predict(model, sets))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sciDiT QM9 property predictor"):
        load_predictor(tmp_path / "other.pt")


def test_cli_molecules_condition(tmp_path, capsys):
    sets, _ = qm9_rows(4)
    sdf = _sdf_with_requests(tmp_path / "s.sdf", sets, [{"gap": 5.0}, {"gap": 7.0}, {"gap": 9.0}, {"gap": 4.0}])
    ckpt = save_predictor(tmp_path / "p" / "gap.pt", "gap", _flat_predictor(6.0), {"hidden": 8, "filters": 8, "interactions": 1, "gaussians": 5,
                          "mean": 6.0, "std": 2.0}, AtomCountBaseline([5], [1.0], 0.0, 1.0), {"test_mae": 0.4})
    out = tmp_path / "r.json"
    assert main([f"molecules={sdf}", "condition=true", f"predictor={ckpt.parent}", f"out={out}", "openbabel=0"]) == 0
    report = json.loads(out.read_text())
    assert report["mae_gap_mev"] == pytest.approx(1000 * (1 + 1 + 3 + 2) / 4) and report["validity"] == 1.0
    assert "Conditional figures" in out.with_suffix(".md").read_text()


def test_cli_crystal_manifest_requests(tmp_path):
    folder = tmp_path / "crystals"
    write_cif_folder([rock_salt(), cesium_chloride()], folder)
    manifest = pd.read_csv(folder / MANIFEST, sep="\t", dtype=str, keep_default_na=False)
    manifest["request"] = ['{"elements":["Cl","Na"],"spacegroup":225}', '{"elements":["Cl","Na"],"spacegroup":225}']
    manifest.to_csv(folder / MANIFEST, sep="\t", index=False)
    out = tmp_path / "r.json"
    assert main([f"crystals={folder}", "condition=true", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["spacegroup_match_rate"] == 0.5 and report["composition_hit_rate"] == 0.5


@pytest.mark.parametrize(
    "requests, extra, message",
    [
        ([None, None], [], "no sample carries a request"),
        ([{"gapp": 1.0}, None], [], "unknown condition key 'gapp'"),
        ([{"gap": 1.0}, None], ["predictor=nowhere.pt"], "nowhere.pt: property predictor checkpoint not found"),
    ],
)
def test_cli_condition_bad_inputs_exit_2(tmp_path, capsys, requests, extra, message):
    sets, _ = qm9_rows(2)
    sdf = _sdf_with_requests(tmp_path / "s.sdf", sets, requests)
    out = tmp_path / "r.json"
    assert main([f"molecules={sdf}", "condition=true", *extra, f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_cli_condition_keys_need_condition(tmp_path, capsys):
    assert main(["molecules=a.sdf", "predictor=p.pt", f"out={tmp_path / 'r.json'}"]) == 2
    assert "needs condition=true" in capsys.readouterr().err
    assert main(["crystals=a", "condition=1", "xtb=1", f"out={tmp_path / 'r.json'}"]) == 2
    assert "does not apply to crystals" in capsys.readouterr().err


def test_sdf_record_request_property_survives_export(tmp_path):
    sets, _ = qm9_rows(1)
    sdf = _sdf_with_requests(tmp_path / "s.sdf", sets, [{"gap": 6.5}])
    mol = next(iter(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False)))
    assert json.loads(mol.GetProp("request")) == {"gap": 6.5}


def test_formation_energy_from_references_closed_form():
    from pymatgen.core import Composition

    from sciDiT.evaluation.conditional import formation_energy_from_references

    refs = {"Na": -1.0, "Cl": -2.0}
    out = formation_energy_from_references([Composition("NaCl"), Composition("NaCl2"), Composition("KCl")], np.array([-3.0, -4.0, -3.0]), refs)
    assert out[0] == pytest.approx(-3.0 + 1.5) and out[1] == pytest.approx(-4.0 - (-1.0 / 3 - 4.0 / 3)) and np.isnan(out[2])


def test_cif_block_request_item_and_comment(tmp_path):
    from sciDiT.evaluation.io import read_crystals
    from sciDiT.export import write_cif_file

    path = tmp_path / "two.cif"
    write_cif_file([rock_salt(), cesium_chloride()], path)
    blocks = path.read_text().split("data_")
    text = "data_" + blocks[1] + "_scidit_request '{\"spacegroup\":225}'\n" + "data_" + blocks[2] + '# request: {"elements":["Cs","Cl"]}\n'
    path.write_text(text)
    sets = read_crystals(path)
    assert requests_of(sets, ("spacegroup", "elements")) == [{"spacegroup": 225}, {"elements": ["Cs", "Cl"]}]


def test_cli_manifest_unknown_key_names_the_row(tmp_path, capsys):
    folder = tmp_path / "crystals"
    write_cif_folder([rock_salt(), cesium_chloride()], folder)
    manifest = pd.read_csv(folder / MANIFEST, sep="\t", dtype=str, keep_default_na=False)
    manifest["request"] = ['{"spacegroup":225}', '{"space_group":221}']
    manifest.to_csv(folder / MANIFEST, sep="\t", index=False)
    out = tmp_path / "r.json"
    assert main([f"crystals={folder}", "condition=true", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{MANIFEST} row 1" in err and "unknown condition key 'space_group'" in err and err.count("\n") == 1 and not out.exists()


def test_qm9_properties_in_user_units():
    from sciDiT.data.qm9 import QM9_SIZE, load_qm9_properties

    props = load_qm9_properties(("gap", "homo", "alpha", "mu", "Cv"))
    assert len(props) == QM9_SIZE
    methane = props.loc[1]  # QM9 index 1 is CH4: gap 0.5048 Ha, HOMO -0.3877 Ha, alpha 13.21 Bohr^3, mu 0 D, Cv 6.469
    assert methane["gap"] == pytest.approx(0.5048 * 27.211386) and methane["homo"] == pytest.approx(-0.3877 * 27.211386)
    assert (methane["alpha"], methane["mu"], methane["Cv"]) == (13.21, 0.0, 6.469)
    with pytest.raises(ValueError, match="unknown QM9 property 'U0'"):
        load_qm9_properties(("U0",))
