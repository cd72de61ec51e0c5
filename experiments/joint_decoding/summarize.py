"""Table of the bond-decoding study (experiments/joint_decoding/run.sh): one column per decoding.

Reads ``<dir>/<name>.json`` (``python -m sciDiT.evaluate``) and ``<dir>/<name>.sdf``, and counts, per
decoding, the atoms whose element differs from the argmax decoding of the same sample (same seed,
same positions): how far the valence rule moved the composition away from the decoder's first choice;
and the written bonds that the geometry does not support: longer than 1.3 x the sum of the two
covalent radii (RDKit's own connectivity threshold, ``rdDetermineBonds``' default ``covFactor``).

    python experiments/joint_decoding/summarize.py outputs/joint_decoding --argmax argmax
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from sciDiT.tokenizers.valence import COV_FACTOR

ROWS = [
    ("validity", "strict validity on the written bonds (headline)"),
    ("validity_connected", "strict valid and connected"),
    ("uniqueness", "uniqueness (over valid)"),
    ("novelty", "novelty (over valid)"),
    ("validity_openbabel", "OpenBabel path from coordinates (ADiT's metric)"),
    ("validity_perceived", "strict validity, bonds perceived from coordinates"),
    ("atom_stability", "EDM atom stability (coordinates)"),
    ("molecule_stability", "EDM molecule stability (coordinates)"),
    ("pb_bond_lengths", "PoseBusters bond lengths (over valid)"),
    ("pb_bond_angles", "PoseBusters bond angles (over valid)"),
    ("pb_internal_steric_clash", "PoseBusters internal steric clash (over valid)"),
    ("pb_all", "PoseBusters all checks (over valid)"),
]


def read(path: Path) -> tuple[dict[int, list[int]], float]:
    """(sample_index -> atomic numbers of each record, share of written bonds longer than COV_FACTOR x covalent radii)."""
    RDLogger.DisableLog("rdApp.*")
    table = Chem.GetPeriodicTable()
    out, long_bonds, bonds = {}, 0, 0
    for mol in Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False):
        if mol is None:
            continue
        out[int(mol.GetProp("sample_index"))] = [a.GetAtomicNum() for a in mol.GetAtoms()]
        pos = mol.GetConformer().GetPositions()
        for b in mol.GetBonds():
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            limit = COV_FACTOR * (table.GetRcovalent(mol.GetAtomWithIdx(i).GetAtomicNum()) + table.GetRcovalent(mol.GetAtomWithIdx(j).GetAtomicNum()))
            long_bonds += float(np.linalg.norm(pos[i] - pos[j])) > limit
            bonds += 1
    return out, long_bonds / max(1, bonds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--argmax", default="argmax", help="name of the argmax decoding's files")
    args = parser.parse_args()
    names = sorted(p.stem for p in args.folder.glob("*.json") if p.with_suffix(".sdf").exists())  # molecule reports only
    names.sort(key=lambda n: (n != args.argmax, n))
    reports = {n: json.loads((args.folder / f"{n}.json").read_text()) for n in names}
    files = {n: read(args.folder / f"{n}.sdf") for n in names}  # each SD file parsed once
    base = files[args.argmax][0]
    print("| figure | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key, label in ROWS:
        cells = [reports[n].get(key) for n in names]
        print(f"| {label} | " + " | ".join("-" if c is None or c != c else f"{100 * c:.1f}%" for c in cells) + " |")
    changed_atoms, changed_mols, long_bonds = [], [], []
    for n in names:
        other, long_share = files[n]
        long_bonds.append(long_share)
        diffs = [sum(a != b for a, b in zip(base[i], other[i])) for i in base if i in other]
        changed_atoms.append(np.sum(diffs) / max(1, sum(len(base[i]) for i in base if i in other)))
        changed_mols.append(np.mean([d > 0 for d in diffs]))
    print("| atoms with another element than argmax | " + " | ".join(f"{100 * c:.2f}%" for c in changed_atoms) + " |")
    print("| molecules with any element changed | " + " | ".join(f"{100 * c:.1f}%" for c in changed_mols) + " |")
    print(f"| written bonds longer than {COV_FACTOR} x covalent radii | " + " | ".join(f"{100 * c:.1f}%" for c in long_bonds) + " |")


if __name__ == "__main__":
    main()
