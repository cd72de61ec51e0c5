"""Minimise a generator's raw molecules near where they were decoded: the targets of the refiner's training pairs.

    python -m sciDiT.sample pretrained=qm9_mp20_cpu domain=molecule n=5000 seed=201 refine=false bond_min_prob=1e-4 out=raw.sdf
    python experiments/geometry_refiner/minimise_pairs.py raw.sdf min.sdf --max-displacement 0.5
    python experiments/geometry_refiner/train_refiner.py qm9_mp20_cpu --pair-sdf raw.sdf min.sdf ...

Each record of RAW (as decoded, its graph as written) is minimised with MMFF94 (UFF where MMFF94 has no atom type) on its
own graph, every atom free within ``--max-displacement`` Angstrom of its decoded place and held by a harmonic restraint
beyond it: the minimum fixes bond lengths and angles but keeps the decoded conformation, so the pair asks the refiner
for local geometry, not for a conformer search (unrestrained minima lie 0.95 A RMSD from the raw decodes, 0.5 A restrained).
``bond_min_prob=1e-4`` is the sampler's setting when it refines, so the raw graphs are those the refiner meets first.
OUT has the same records in the same order, with ``relaxed`` = 1, or 0 where the molecule does not sanitize.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rdkit import Chem

from sciDiT.errors import SciDiTInputError
from sciDiT.export.atomic import atomic_write_text
from sciDiT.export.sdf import mol_record, relax_molecule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="SD file of the generator's molecules as decoded (refine=false)")
    parser.add_argument("out", help="SD file of the same molecules minimised")
    parser.add_argument("--max-displacement", type=float, default=0.5, help="Angstrom each atom moves freely (restrained beyond; 0: unrestrained)")
    parser.add_argument("--restraint-k", type=float, default=100.0, help="force constant of the restraint (kcal/mol/A^2)")
    args = parser.parse_args(argv)
    try:
        if not Path(args.raw).is_file():
            raise SciDiTInputError("no such file", args.raw)
        mols = list(Chem.SDMolSupplier(args.raw, sanitize=False, removeHs=False))
        if not mols or any(m is None for m in mols):
            raise SciDiTInputError("not an SD file of molecules (a record does not parse)", args.raw)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    held = args.max_displacement if args.max_displacement > 0 else None
    relaxed = [relax_molecule(m, max_displacement=held, restraint_k=args.restraint_k) for m in mols]
    try:
        atomic_write_text(args.out, "".join(mol_record(m) for m in relaxed))
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"minimised {sum(m.GetIntProp('relaxed') for m in relaxed)} of {len(mols)} molecules -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
