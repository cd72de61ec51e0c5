"""Markdown tables of experiments/decoder_finetune: VAE test reconstruction and generated-sample metrics per arm.

python experiments/decoder_finetune/summarize.py <out of run.sh> base m30 m45 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MOLECULE = [("validity", "strict, decoded bonds"), ("validity_connected", "strict and connected"), ("uniqueness", "unique"),
            ("novelty", "novel"), ("validity_perceived", "strict, bonds from coordinates"), ("validity_openbabel", "OpenBabel path"),
            ("atom_stability", "EDM atom stab."), ("w1_bond_length", "W1 bond length (A)")]
CRYSTAL = [("structural_validity", "structural"), ("compositional_validity", "SMACT"), ("validity", "overall"), ("uniqueness", "unique"),
           ("novelty", "novel")]
RECON = [("molecule/graph_match_rate", "QM9 graph exact"), ("molecule/rmsd_mean", "QM9 RMSD (A)"), ("crystal/match_rate", "MP-20 StructureMatcher"),
         ("crystal/type_accuracy", "MP-20 elements")]


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if "rmsd" in key or key.startswith("w1") else f"{100 * value:.1f}%"


def _read(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def table(out: Path, arms: list[str]) -> str:
    lines = ["| arm | " + " | ".join(label for _, label in RECON + MOLECULE + CRYSTAL) + " |", "|---" * (1 + len(RECON + MOLECULE + CRYSTAL)) + "|"]
    for arm in arms:
        recon = _read(out / arm / "vae" / "metrics.json")
        mol, xtal = _read(out / "eval" / arm / "molecules.json"), _read(out / "eval" / arm / "crystals.json")
        cells = [_fmt(k, recon.get(f"test/{k}")) for k, _ in RECON] + [_fmt(k, mol.get(k)) for k, _ in MOLECULE] + [_fmt(k, xtal.get(k)) for k, _ in CRYSTAL]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2:]))
