"""Shortest interatomic distances of crystals in CIF folders (and of MP-20 test): a finer structural check than CDVAE's.

    python experiments/crystal_refiner/close_contacts.py xtals/ [more/ ...] [--reference 1000]

CDVAE's structural validity only asks that no two atoms lie within 0.5 A. This prints, per folder, the share of
crystals whose shortest distance (periodic images included) is below 0.5 A, and the share whose shortest distance
between two non-hydrogen atoms is below 0.8 / 1.0 / 1.2 / 1.5 A, with the median shortest distance; ``--reference N``
adds the first N crystals of MP-20 test (``SCIDIT_DATA_DIR``) as the yardstick.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

THRESHOLDS = (0.8, 1.0, 1.2, 1.5)


def shortest(structure: Structure) -> tuple[float, float]:
    """Shortest distance of any two atoms and of two non-hydrogen atoms (A), periodic images included."""
    if len(structure) == 1:
        edge = float(min(structure.lattice.abc))
        return edge, edge
    dist = structure.distance_matrix + np.eye(len(structure)) * 1e3
    heavy = [i for i, site in enumerate(structure) if site.specie.symbol != "H"]
    d_heavy = float(dist[np.ix_(heavy, heavy)].min()) if len(heavy) > 1 else float(min(structure.lattice.abc))
    return float(dist.min()), d_heavy


def summary(name: str, structures: list[Structure]) -> str:
    pairs = np.array([shortest(s) for s in structures])  # [n, 2]
    heavy = "  ".join(f"<{t} {np.mean(pairs[:, 1] < t):.3f}" for t in THRESHOLDS)
    return f"{name}: {len(pairs)} crystals, any pair <0.5 A {np.mean(pairs[:, 0] < 0.5):.3f}; non-H pairs {heavy}; median shortest {np.median(pairs[:, 0]):.2f} A"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", help="folders of CIF files")
    parser.add_argument("--reference", type=int, default=0, help="also the first N MP-20 test crystals")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pymatgen's CIF parser warns on rounded occupancies
    for folder in args.folders:
        files = sorted(Path(folder).glob("*.cif"))
        if not files:
            print(f"error: {folder}: no CIF files", file=sys.stderr)
            sys.exit(2)
        structures = []
        for f in files:
            try:
                structures.append(Structure.from_file(str(f)))
            except Exception as err:  # pymatgen raises many kinds on a malformed CIF
                print(f"error: {f}: not a readable CIF ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
                sys.exit(2)
        print(summary(folder, structures), flush=True)
    if args.reference:
        from sciDiT.data import load_cdvae
        from sciDiT.evaluation.crystals import to_structure

        test = load_cdvae("mp20", "test")
        print(summary("MP-20 test", [to_structure(test[i]) for i in range(min(args.reference, len(test)))]))


if __name__ == "__main__":
    main()
