"""Compare two crystal sample folders of the same checkpoint and seed, decoded with composition=argmax and =coherent.

    python experiments/crystal_composition/compare.py outputs/b10/xtal_argmax outputs/b10/xtal_coherent

Both folders hold the same samples (same latents, same geometry; only the atom types differ), so the
manifests' formulas can be compared row by row: how many crystals the coherent rule changed, and for
those, SMACT validity and distinct elements before and after, whether the merge kept the argmax's
stoichiometric ratios of the elements it kept, and a few examples.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from pymatgen.core import Composition

from sciDiT.tokenizers.oxidation import smact_validity


def _formulas(folder: str) -> dict[int, str]:
    with open(Path(folder) / "manifest.tsv") as fh:
        return {int(r["index"]): r["formula"] for r in csv.DictReader(fh, delimiter="\t")}


def _smact(formula: str) -> bool:
    comp = Composition(formula).reduced_composition
    return smact_validity([str(e) for e in comp.elements], [int(round(comp[e])) for e in comp.elements])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("argmax")
    parser.add_argument("coherent")
    parser.add_argument("--examples", type=int, default=8)
    args = parser.parse_args()
    a, c = _formulas(args.argmax), _formulas(args.coherent)
    changed = [i for i in sorted(a) if a[i] != c[i]]
    before = sum(_smact(a[i]) for i in changed)
    after = sum(_smact(c[i]) for i in changed)
    lost = sum(_smact(a[i]) and not _smact(c[i]) for i in changed)
    gained = sum(_smact(c[i]) and not _smact(a[i]) for i in changed)
    k_a = sum(len(Composition(a[i]).elements) for i in changed) / max(len(changed), 1)
    k_c = sum(len(Composition(c[i]).elements) for i in changed) / max(len(changed), 1)
    print(f"{len(changed)} of {len(a)} crystals changed by the coherent rule")
    print(f"among them: SMACT {before} -> {after} (lost {lost}, gained {gained}); mean distinct elements {k_a:.2f} -> {k_c:.2f}")
    for i in changed[: args.examples]:
        print(f"  sample {i}: {a[i]} ({'ok' if _smact(a[i]) else 'fails'}) -> {c[i]} ({'ok' if _smact(c[i]) else 'fails'})")


if __name__ == "__main__":
    main()
