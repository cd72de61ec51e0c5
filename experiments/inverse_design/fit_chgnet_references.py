"""Fit elemental reference energies that turn CHGNet energies into formation energies, on MP-20 train.

    python experiments/inverse_design/fit_chgnet_references.py --n-train 2000 --n-test 300 \
        --out experiments/inverse_design/chgnet_references.json

CHGNet (0.3 weights shipped in the chgnet wheel, offline) gives a total energy per atom E(s). A
formation energy needs the energy of each element in its reference state; instead of relaxing
elemental ground states (not available offline), one chemical potential mu_el per element is fitted
by least squares so that ``E(s) - sum_el x_el(s) mu_el`` matches MP's formation energy per atom on
the first ``--n-train`` MP-20 train crystals (CHGNet single points at the DFT-relaxed structures,
no relaxation). Being a fit, the references also absorb MP's per-element energy corrections. The
held-out check is the MAE on the first ``--n-test`` MP-20 test crystals; elements seen fewer than
``--min-count`` times in the fit get no reference (their crystals are counted as unscorable).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sciDiT.data.cdvae import load_cdvae, read_split_csv, split_file
from sciDiT.evaluation.conditional import formation_energy_from_references
from sciDiT.evaluation.crystals import to_structure


def static_energies(split: str, n: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Compositions, CHGNet energies per atom and MP formation energies of the first ``n`` rows of a split."""
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False)
    data = load_cdvae("mp20", split)
    table = read_split_csv(split_file("mp20", split), limit=n)
    structures = [to_structure(data[i]) for i in range(min(n, len(data)))]
    preds = model.predict_structure(structures, task="e", batch_size=32)
    energy = np.array([float(p["e"]) for p in preds])
    return [s.composition for s in structures], energy, table["formation_energy_per_atom"].to_numpy(dtype=float)[: len(structures)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--out", default="experiments/inverse_design/chgnet_references.json")
    args = parser.parse_args()
    start = time.monotonic()
    comps, energy, formation = static_energies("train", args.n_train)
    elements = sorted({el.symbol for c in comps for el in c.elements})
    col = {e: k for k, e in enumerate(elements)}
    x = np.zeros((len(comps), len(elements)))
    for i, c in enumerate(comps):
        for el, frac in c.fractional_composition.items():
            x[i, col[el.symbol]] = frac
    mu, *_ = np.linalg.lstsq(x, energy - formation, rcond=None)
    counts = (x > 0).sum(axis=0)
    refs = {e: float(mu[col[e]]) for e in elements if counts[col[e]] >= args.min_count}
    fitted = formation_energy_from_references(comps, energy, refs)
    fit_mae = float(np.abs(fitted - formation)[np.isfinite(fitted)].mean())
    test_comps, test_energy, test_formation = static_energies("test", args.n_test)
    derived = formation_energy_from_references(test_comps, test_energy, refs)
    known = np.isfinite(derived)
    out = {"references_ev_per_atom": refs, "n_train": len(comps), "n_test": len(test_comps), "n_test_scorable": int(known.sum()),
           "train_mae_ev": fit_mae, "test_mae_ev": float(np.abs(derived[known] - test_formation[known]).mean()),
           "min_count": args.min_count, "seconds": round(time.monotonic() - start, 1),
           "method": "CHGNet 0.3 single points at MP-20 DFT structures; mu_el by least squares of E_CHGNet - E_form(MP) on element fractions"}
    with open(args.out, "w") as fh:
        fh.write(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "references_ev_per_atom"}, indent=2))


if __name__ == "__main__":
    main()
