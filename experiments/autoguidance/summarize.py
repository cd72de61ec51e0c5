"""Print the autoguidance sweep's table from ``python -m sciDiT.evaluate`` reports (molecules and crystals).

    python experiments/autoguidance/summarize.py outputs/autoguidance/*.json
"""

import json
import sys
from pathlib import Path

MOLECULE = [("validity", "strict, decoded bonds"), ("validity_connected", "valid and connected"),
            ("validity_perceived", "strict, re-perceived"), ("validity_openbabel", "OpenBabel path"),
            ("atom_stability", "EDM atom stability"), ("molecule_stability", "EDM molecule stability"),
            ("uniqueness", "uniqueness"), ("w1_bond_length", "W1 bond length (A)")]
CRYSTAL = [("structural_validity", "structural"), ("compositional_validity", "SMACT"), ("validity", "overall"),
           ("uniqueness", "uniqueness"), ("w1_density", "W1 density"), ("w1_num_elements", "W1 number of elements")]


def main(paths: list[str]) -> None:
    for domain, columns in (("molecule", MOLECULE), ("crystal", CRYSTAL)):
        rows = [(Path(p).stem, json.loads(Path(p).read_text())) for p in sorted(paths) if Path(p).stem.startswith(domain)]
        if not rows:
            continue
        print(f"| {domain} arm (scale, interval) | n | " + " | ".join(name for _, name in columns) + " |")
        print("|---" * (len(columns) + 2) + "|")
        for tag, report in rows:
            cells = [f"{report[k]:.3f}" if k.startswith("w1") else f"{100 * report[k]:.1f}%" for k, _ in columns]
            print(f"| {tag.removeprefix(domain + '_')} | {int(report['n_samples'])} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
