"""Reconstruction metrics on real QM9 / MP-20 rows: copies match, perturbations and type swaps do not."""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure

from sciDiT.batch import TokenSet
from sciDiT.evaluation.reconstruction import crystal_reconstruction, kabsch_rmsd, kabsch_superpose, molecule_reconstruction
from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer, atomic_number

DATA_DIR = Path(os.environ.get("SCIDIT_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _qm9_rows(n: int) -> pd.DataFrame:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None:
        pytest.skip("qm9pack not installed")
    csv = Path(spec.submodule_search_locations[0]) / "data" / "qm9_part2.csv"
    return pd.read_csv(csv, nrows=n, usecols=["Elements", "XYZ_Ang"])


def qm9_sets(n: int) -> list[TokenSet]:
    tok = MoleculeTokenizer()
    out = []
    for els, xyz in zip(*_qm9_rows(n).T.values):
        numbers = [atomic_number(e) for e in ast.literal_eval(els)]
        out.append(tok.from_arrays(np.array(numbers), np.array(ast.literal_eval(xyz))))
    return out


def mp20_sets(n: int) -> list[TokenSet]:
    csv = DATA_DIR / "mp20" / "test.csv.gz"
    if not csv.exists():
        pytest.skip(f"{csv} missing")
    tok = CrystalTokenizer()
    return [tok.from_cif(c) for c in pd.read_csv(csv, nrows=n, usecols=["cif"])["cif"]]


def _with(ts: TokenSet, **kw) -> TokenSet:
    return TokenSet(**{**ts.__dict__, **kw})


def _random_rotation(rng: np.random.Generator) -> torch.Tensor:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float32)


def test_kabsch_rmsd_closed_form():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(12, 3))
    rot = _random_rotation(rng).double().numpy()
    assert kabsch_rmsd(p @ rot + 3.0, p) < 1e-6
    shifted = p.copy()
    shifted[0] += [0.3, 0.0, 0.0]
    assert 0 < kabsch_rmsd(shifted, p) <= 0.3 / math.sqrt(12) + 1e-9  # alignment can only lower the raw RMSD
    assert kabsch_rmsd(-p, p) > 0.1  # a mirror image is not a rotation (p is chiral in general)
    np.testing.assert_allclose(kabsch_superpose(p @ rot + 3.0, p), p, atol=1e-6)  # a rigid copy lands on the original
    moved = kabsch_superpose(shifted, p @ rot - 1.0)
    np.testing.assert_allclose(np.linalg.norm(moved[1:] - moved[2], axis=1), np.linalg.norm(shifted[1:] - shifted[2], axis=1))  # rigid


def test_molecule_copies_rotations_match():
    sets = qm9_sets(40)
    rng = np.random.default_rng(1)
    rotated = [_with(s, pos=s.pos @ _random_rotation(rng) + 2.0) for s in sets]
    res = molecule_reconstruction(rotated, sets)
    assert res["match_rate"] == 1.0 and res["graph_match_rate"] == 1.0 and res["type_accuracy"] == 1.0
    assert res["rmsd_mean"] < 1e-4
    assert res["per_set"]["match"].shape == (40,)


def test_molecule_small_noise_matches_large_noise_does_not():
    sets = qm9_sets(40)
    g = torch.Generator().manual_seed(0)
    small = [_with(s, pos=s.pos + 0.02 * torch.randn(s.pos.shape, generator=g)) for s in sets]
    big = [_with(s, pos=s.pos + 1.0 * torch.randn(s.pos.shape, generator=g)) for s in sets]
    res_small = molecule_reconstruction(small, sets)
    res_big = molecule_reconstruction(big, sets)
    assert res_small["match_rate"] == 1.0 and 0.01 < res_small["rmsd_mean"] < 0.05
    assert res_big["match_rate"] == 0.0 and math.isnan(res_big["rmsd_mean"])
    assert res_big["graph_match_rate"] < 0.1 and res_big["rmsd_mean_all"] > 0.5


def test_molecule_type_swap_and_count_mismatch_do_not_match():
    sets = qm9_sets(20)
    swapped = []
    for s in sets:
        types = s.types.clone()
        heavy = (types > 1).nonzero().flatten()
        types[heavy[0]] = 9 if types[heavy[0]] != 9 else 6  # one heavy atom becomes F (or C)
        swapped.append(_with(s, types=types))
    res = molecule_reconstruction(swapped, sets)
    assert res["match_rate"] == 0.0
    expected_acc = 1 - len(sets) / sum(s.num_tokens for s in sets)
    assert res["type_accuracy"] == pytest.approx(expected_acc)
    dropped = [_with(s, types=s.types[:-1], pos=s.pos[:-1], frac=s.frac[:-1], values=s.values[:-1]) for s in sets]
    res = molecule_reconstruction(dropped, sets)
    assert res["match_rate"] == 0.0 and res["type_accuracy"] == 0.0 and np.isinf(res["per_set"]["rmsd"]).all()


def test_crystal_copies_and_perturbations():
    sets = mp20_sets(12)
    g = torch.Generator().manual_seed(0)
    small = [_with(s, frac=(s.frac + 0.005 * torch.randn(s.frac.shape, generator=g)) % 1.0) for s in sets]
    res = crystal_reconstruction(small, sets, workers=1)
    assert res["match_rate"] == 1.0 and res["type_accuracy"] == 1.0
    assert 0 < res["rmsd_mean"] < 0.1  # normalised by (V/n)^(1/3)
    scrambled = [_with(s, frac=torch.rand(s.frac.shape, generator=g)) for s in sets]
    res = crystal_reconstruction(scrambled, sets, workers=1)
    assert res["match_rate"] < 0.3  # a few 1-2 atom cells stay equivalent under any shift


def test_crystal_type_swap_and_lattice_error():
    sets = [s for s in mp20_sets(20) if len(set(s.types.tolist())) >= 2][:10]
    swapped = []
    for s in sets:
        types = s.types.clone()
        types[types == types[0]] = 3 if int(types[0]) != 3 else 11  # replace one element everywhere
        swapped.append(_with(s, types=types))
    res = crystal_reconstruction(swapped, sets, workers=1)
    assert res["match_rate"] == 0.0 and res["type_accuracy"] < 1.0
    stretched = [_with(s, lattice=s.lattice * torch.tensor([1.5, 1, 1, 1, 1, 1])) for s in sets]
    res = crystal_reconstruction(stretched, sets, workers=1)
    assert res["match_rate"] < 0.5
    expected = float(np.mean([0.5 * float(s.lattice[0]) / 3 for s in sets]))
    assert res["lattice_length_mae"] == pytest.approx(expected, rel=1e-4)


def test_crystal_pool_path_agrees_with_serial():
    sets = mp20_sets(70)
    assert isinstance(CrystalTokenizer().to_structure(sets[0]), Structure)
    serial = crystal_reconstruction(sets, sets, workers=1)
    pooled = crystal_reconstruction(sets, sets, workers=2)
    assert serial["match_rate"] == pooled["match_rate"] == 1.0
    np.testing.assert_allclose(serial["per_set"]["rmsd"], pooled["per_set"]["rmsd"])


def test_length_mismatch_is_an_input_error():
    sets = qm9_sets(3)
    with pytest.raises(ValueError, match="as many predictions"):
        molecule_reconstruction(sets[:2], sets)
