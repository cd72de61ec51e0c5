"""Score a composition model's draws on their own, against MP-20: the first stage of composition-first generation.

    python experiments/composition_first/evaluate_compositions.py outputs/composition_model.pt --n 1000 --seed 0 [--temperature 0.9]

Draws ``n`` compositions (sample ``i`` from its own random stream, as ``composition_first`` sampling does) and prints
JSON: SMACT validity (the same rule as ``python -m sciDiT.evaluate``), the share of compositions that are new
(cell formula, and reduced formula, not in MP-20 train), uniqueness, W1 of the number of atoms and of elements
against MP-20 test, the total variation distance of the element distribution, the all-metal share, and the same
figures for MP-20 test and train themselves as reference rows (the shared copy's splits differ: data/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np
import torch
from pymatgen.core import Composition, Element
from scipy.stats import wasserstein_distance

from sciDiT.data import load_cdvae
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.molecules import total_variation
from sciDiT.generate import sample_seed
from sciDiT.tokenizers.elements import formula
from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity
from sciDiT.training.composition_model import load_composition_model


def figures(comps: list[list[int]], train_cells: set[str], train_reduced: set[str], test: list[list[int]]) -> dict[str, float]:
    """The composition figures of ``comps`` (atomic numbers, one per atom) against MP-20 train (novelty) and test."""
    cells = [formula(c) for c in comps]
    reduced = [Composition(f).reduced_formula for f in cells]
    elements = [sorted(set(c)) for c in comps]
    return {
        "n": len(comps),
        "smact_validity": float(np.mean([smact_validity(*reduced_counts(c)) for c in comps])),
        "unique_cell_formula": len(set(cells)) / len(cells),
        "novel_cell_formula": float(np.mean([f not in train_cells for f in cells])),
        "novel_reduced_formula": float(np.mean([f not in train_reduced for f in reduced])),
        "w1_num_atoms": float(wasserstein_distance([len(c) for c in comps], [len(c) for c in test])),
        "w1_num_elements": float(wasserstein_distance([len(e) for e in elements], [len(set(c)) for c in test])),
        "tv_elements": total_variation(Counter(z for c in comps for z in c), Counter(z for c in test for z in c)),
        "all_metal": float(np.mean([all(Element.from_Z(z).is_metal for z in e) for e in elements])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a composition model file")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0, help="the sampling temperature of the next-id distributions")
    ap.add_argument("--data-dir", default=None, help="the data folder holding mp20/ (default: SCIDIT_DATA_DIR)")
    args = ap.parse_args()
    try:
        model, info = load_composition_model(args.model)
        train, test = ([ts.types.tolist() for ts in load_cdvae("mp20", split, data_dir=args.data_dir)] for split in ("train", "test"))
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    comps = model.draw([torch.Generator().manual_seed(sample_seed(args.seed, i)) for i in range(args.n)], args.temperature)
    train_cells = {formula(c) for c in train}
    train_reduced = {Composition(f).reduced_formula for f in train_cells}
    out = {"model": args.model, "temperature": args.temperature, "training": info, "samples": figures(comps, train_cells, train_reduced, test),
           "mp20_test": figures([sorted(c) for c in test], train_cells, train_reduced, test),
           "mp20_train": figures([sorted(c) for c in train], train_cells, train_reduced, test)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
