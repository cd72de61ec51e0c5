"""Score a trained bond-head model: generated molecules on decoded bonds vs bonds re-perceived from
coordinates, and the VAE's graph reconstruction of QM9 test molecules.

    python experiments/bond_head/score.py samples=molecules.sdf ckpt=<output_dir>/dit/checkpoints/last.ckpt n_test=1000

Strict validity (the papers' definition): RDKit sanitization succeeds on the molecule as written
(decoded bonds) or as perceived with ``DetermineBonds(charge=0)`` (no Hueckel retry, no fallback),
and no atom has radical electrons. "Connected": one fragment. The OpenBabel path (ADiT's metric)
is reported separately. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys

import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

from sciDiT.batch import collate
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.evaluation.io import read_molecules
from sciDiT.evaluation.molecules import openbabel_molecule
from sciDiT.generate import load_generator
from sciDiT.tokenizers import MoleculeTokenizer


def strict(mol: Chem.Mol | None) -> tuple[bool, bool]:
    """(valid, valid and connected) for a molecule whose bonds are as given (sanitized on a copy)."""
    if mol is None:
        return False, False
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit sanitization errors of several types
        return False, False
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return False, False
    return True, len(Chem.GetMolFrags(mol)) == 1


def perceived(mol: Chem.Mol) -> Chem.Mol | None:
    """The same atoms and coordinates with bonds perceived at total charge 0 (no fallback), or None."""
    bare = Chem.RWMol(mol)
    for b in list(bare.GetBonds()):
        bare.RemoveBond(b.GetBeginAtomIdx(), b.GetEndAtomIdx())
    for a in bare.GetAtoms():
        a.SetFormalCharge(0)
    out = bare.GetMol()
    try:
        rdDetermineBonds.DetermineBonds(out, charge=0)
    except Exception:  # no bond-order assignment fits
        return None
    return out


def score_samples(path: str) -> dict[str, float]:
    raw = [m for m in Chem.SDMolSupplier(path, sanitize=False, removeHs=False)]
    sets = read_molecules(path)
    decoded = [strict(m) for m in raw]
    reperceived = [strict(perceived(m)) for m in raw]
    obabel = [openbabel_molecule(ts) is not None for ts in sets]
    n = len(raw)
    sources = [m.GetProp("bond_source") if m.HasProp("bond_source") else "none" for m in raw]
    return {
        "n_samples": n,
        "bond_source_decoded": sources.count("decoded") / n,
        "decoded_valid_strict": sum(v for v, _ in decoded) / n,
        "decoded_valid_and_connected": sum(c for _, c in decoded) / n,
        "perceived_valid_strict": sum(v for v, _ in reperceived) / n,
        "perceived_valid_and_connected": sum(c for _, c in reperceived) / n,
        "openbabel_valid": sum(obabel) / n,
    }


@torch.no_grad()
def score_reconstruction(ckpt: str, n_test: int, batch_size: int = 128) -> dict[str, float]:
    """Fraction of QM9 test molecules whose decoded graph (types, bonds, charges) equals the true graph."""
    vae = load_generator(ckpt).model.vae
    data = load_qm9_split("test")
    sets = [data[i] for i in range(min(n_test, len(data))) if data[i].bonds is not None]
    same_types = same_graph = valid = 0
    tok = MoleculeTokenizer()
    for k in range(0, len(sets), batch_size):
        batch = collate(sets[k : k + batch_size])
        recon = vae.reconstruct(batch)
        types_ok = ((recon.types == batch.types) | ~batch.mask).all(1)  # [B]
        bonds_ok = (recon.bonds == batch.bonds).flatten(1).all(1) & ((recon.charges == batch.charges) | ~batch.mask).all(1)
        same_types += int(types_ok.sum())
        same_graph += int((types_ok & bonds_ok).sum())
        valid += sum(strict(tok.to_rdkit(ts))[0] for ts in recon.unbatch())
    n = len(sets)
    return {"n_test": n, "recon_types_equal": same_types / n, "recon_graph_equal": same_graph / n, "recon_decoded_valid_strict": valid / n}


def main(argv: list[str]) -> None:
    RDLogger.DisableLog("rdApp.*")
    opts = dict(a.split("=", 1) for a in argv)
    report: dict[str, float] = {}
    if "samples" in opts:
        report.update(score_samples(opts["samples"]))
    if "ckpt" in opts:
        report.update(score_reconstruction(opts["ckpt"], int(opts.get("n_test", 1000))))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
