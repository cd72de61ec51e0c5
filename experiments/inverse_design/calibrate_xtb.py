"""Calibrate GFN2-xTB HOMO-LUMO gaps against QM9's DFT (B3LYP/6-31G(2df,p)) gaps on real QM9 test molecules.

    python experiments/inverse_design/calibrate_xtb.py --n 500 --out experiments/inverse_design/xtb_calibration.json

Single points at the QM9 geometries (the first ``--n`` molecules of the QM9 test split, a random
subset), a least-squares line ``dft_gap = slope * xtb_gap + intercept`` (eV), its R^2 and the
Spearman rank correlation. The JSON is what ``python -m sciDiT.evaluate ... xtb_calibration=FILE``
reads; odd-electron molecules (none in QM9) and failed SCFs are counted and left out of the fit.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from scipy.stats import spearmanr

from sciDiT.data.qm9 import load_qm9, load_qm9_properties, qm9_split
from sciDiT.evaluation.xtb import xtb_gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", default="experiments/inverse_design/xtb_calibration.json")
    args = parser.parse_args()
    full = load_qm9()
    dft = load_qm9_properties(("gap",))["gap"]
    outcome, xs, ys = Counter(), [], []
    for row in qm9_split(len(full))["test"][: args.n]:
        ts = full[int(row)]
        gap, status = xtb_gap(ts.types.numpy(), ts.pos.numpy())
        outcome[status] += 1
        if gap is not None:
            xs.append(gap)
            ys.append(float(dft.loc[ts.meta["qm9_index"]]))
    x, y = np.array(xs), np.array(ys)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    r2 = 1.0 - float((resid**2).sum() / ((y - y.mean()) ** 2).sum())
    out = {"slope": float(slope), "intercept": float(intercept), "r2": r2, "spearman": float(spearmanr(x, y).statistic),
           "mae_calibrated_mev": float(np.abs(resid).mean() * 1000), "mae_raw_mev": float(np.abs(x - y).mean() * 1000),
           "n_molecules": args.n, "n_ok": outcome["ok"], "n_open_shell": outcome["open_shell"], "n_failed": outcome["failed"],
           "method": "GFN2-xTB (tblite) single point at the QM9 geometry vs QM9 B3LYP HOMO-LUMO gap, first n of the QM9 test split"}
    with open(args.out, "w") as fh:
        fh.write(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
