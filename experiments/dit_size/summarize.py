"""Table of the DiT-size study: one column per arm, from ``<out>/<arm>/eval/{molecules,crystals}.json``.

    python experiments/dit_size/summarize.py outputs/dit_size DiT-T DiT-XS
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MOLECULE_ROWS = [
    ("validity", "QM9 strict validity, decoded bonds (headline)"),
    ("validity_connected", "QM9 strict valid and connected"),
    ("uniqueness", "QM9 uniqueness (over valid)"),
    ("novelty", "QM9 novelty (over valid)"),
    ("validity_perceived", "QM9 strict validity, bonds re-perceived from coordinates"),
    ("validity_openbabel", "QM9 OpenBabel path (ADiT's metric)"),
    ("atom_stability", "EDM atom stability"),
    ("molecule_stability", "EDM molecule stability"),
]
CRYSTAL_ROWS = [
    ("validity", "MP-20 overall validity"),
    ("structural_validity", "MP-20 structural validity"),
    ("compositional_validity", "MP-20 compositional validity (SMACT)"),
    ("uniqueness", "MP-20 uniqueness"),
    ("novelty", "MP-20 novelty"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("arms", nargs="+")
    args = parser.parse_args()
    reports = {arm: {kind: json.loads((args.out / arm / "eval" / f"{kind}.json").read_text()) for kind in ("molecules", "crystals")}
               for arm in args.arms}
    print("| metric | " + " | ".join(args.arms) + " |")
    print("|---|" + "---|" * len(args.arms))
    for kind, rows in (("molecules", MOLECULE_ROWS), ("crystals", CRYSTAL_ROWS)):
        for key, label in rows:
            cells = [reports[arm][kind].get(key) for arm in args.arms]
            print(f"| {label} | " + " | ".join("-" if c is None else f"{100 * c:.1f}%" for c in cells) + " |")


if __name__ == "__main__":
    main()
