"""Train EDM-protocol QM9 property predictors (SchNet, one per property) on one half of the QM9 train split.

    python experiments/inverse_design/train_property_predictor.py --properties gap alpha --minutes 5 \
        --out outputs/inverse_design/predictors

Half A (the default) is the judges' half: ``python -m sciDiT.evaluate ... predictor=`` takes only these. Half B is the
generator's: ``--half B`` trains screening predictors for ``load_generator(..., screen_predictor=...)``
(generate-and-screen), which the evaluation refuses as judges.

Each property gets ``<out>/<key>.pt`` (weights-only: weights, plain hyper-parameters, normalisation,
the "#atoms" baseline table fitted on the half, and the training facts: steps, seconds, test MAE) and
``<out>/<key>.json`` (the same facts). The test MAE is measured on the first ``--test-limit``
molecules of the QM9 test split (a random subset: the split lists rows in permutation order).
Training stops at ``--steps`` or after ``--minutes`` of wall time, whichever comes first; the
learning rate follows a cosine over that budget. Geometry comes from the cached QM9 loader,
properties from the qm9pack CSV columns (:func:`sciDiT.data.qm9.load_qm9_properties`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sciDiT.data.conditions import condition_stats
from sciDiT.data.qm9 import QM9_PROPERTIES, edm_property_halves, load_qm9, load_qm9_properties, qm9_split
from sciDiT.evaluation.property_predictor import AtomCountBaseline, PropertyPredictor, collate_atoms, predict, save_predictor

UNIT_SCALE = {"gap": 1000.0, "homo": 1000.0, "lumo": 1000.0}  # MAE reported in meV for the orbital energies (EDM's table)


def train_one(key: str, sets: list, targets: np.ndarray, test_sets: list, test_targets: np.ndarray, args: argparse.Namespace,
              stats: dict | None = None) -> dict:
    """Train one SchNet on (sets, targets), return its facts and write its checkpoint (with the condition ``stats`` of the
    half, for screening predictors: a request is validated and sized by them)."""
    torch.manual_seed(args.seed)
    dipole = key == "mu"
    mean = 0.0 if dipole else float(targets.mean())
    std = float(targets.std())
    hparams = {"hidden": args.hidden, "filters": args.hidden, "interactions": args.interactions, "gaussians": 25,
               "cutoff": args.cutoff, "readout": "add", "dipole": dipole, "mean": mean, "std": std}
    model = PropertyPredictor(**hparams)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    y = torch.tensor((targets - mean) / std, dtype=torch.float32)
    rng = np.random.default_rng(args.seed)
    start, step, seen = time.monotonic(), 0, 0
    budget = args.minutes * 60.0
    model.train()
    while step < args.steps and time.monotonic() - start < budget:
        frac = max(step / args.steps, (time.monotonic() - start) / budget)
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        idx = rng.choice(len(sets), args.batch_size, replace=False)
        z, pos, batch = collate_atoms([sets[i] for i in idx])
        loss = (model.normalised(z, pos, batch) - y[idx]).abs().mean()  # L1 on the normalised target, as EDM
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
        if step % 200 == 0:
            print(f"{key} step {step} loss {loss.item():.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    seconds = time.monotonic() - start
    pred = predict(model, test_sets)
    scale = UNIT_SCALE.get(key, 1.0)
    mae = float(np.abs(pred - test_targets).mean()) * scale
    baseline = AtomCountBaseline.fit(np.array([ts.num_tokens for ts in sets]), targets)
    atoms_mae = float(np.abs(baseline([ts.num_tokens for ts in test_sets]) - test_targets).mean()) * scale
    unit = "meV" if key in UNIT_SCALE else {"alpha": "Bohr^3", "mu": "Debye", "Cv": "cal/(mol K)"}[key]
    info = {"property": key, "unit": unit, "steps": step, "batch_size": args.batch_size, "molecules_seen": seen,
            "half": args.half, "epochs_of_half": seen / len(sets), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "test_molecules": len(test_sets), "test_mae": mae, "test_mae_atom_count_baseline": atoms_mae,
            "test_mae_mean_baseline": float(np.abs(targets.mean() - test_targets).mean()) * scale}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{key}.json").write_text(json.dumps(info, indent=2) + "\n")
    save_predictor(out / f"{key}.pt", key, model, hparams, baseline, info if stats is None else {**info, "condition_stats": stats})
    print(json.dumps(info), flush=True)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--properties", nargs="+", default=list(QM9_PROPERTIES), choices=list(QM9_PROPERTIES))
    parser.add_argument("--out", default="outputs/inverse_design/predictors")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--interactions", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-time cap per property")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half", choices=("A", "B"), default="A", help="A: judges (sciDiT.evaluate); B: the generator's half (screening)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full = load_qm9(args.data_dir, args.cache_dir)
    props = load_qm9_properties(tuple(args.properties), args.data_dir)
    index = np.array(full.store["meta"]["qm9_index"])
    half = edm_property_halves(len(full))[args.half]
    test = qm9_split(len(full))["test"][: args.test_limit]
    sets = [full[int(i)] for i in half]
    test_sets = [full[int(i)] for i in test]
    for key in args.properties:
        values = props[key].reindex(index).to_numpy()
        stats = condition_stats([key], [(full.subset(half), {key: values[half]})]) if args.half == "B" else None
        train_one(key, sets, values[half], test_sets, values[test], args, stats)


if __name__ == "__main__":
    main()
