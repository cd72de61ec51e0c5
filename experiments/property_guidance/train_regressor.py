"""Train a noisy-latent QM9 property regressor for classifier guidance (:mod:`sciDiT.training.latent_guides`).

    python experiments/property_guidance/train_regressor.py qm9_mp20_cpu --properties gap --minutes 10 \\
        --out outputs/property_guidance/qm9_gap.pt

Rows: half B of the QM9 train split (EDM's generator half; ``--rows train`` for all of it); the test
errors are measured on the first ``--test-limit`` molecules of the QM9 test split at flow times 1, 0.8, 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from sciDiT.batch import Domain
from sciDiT.data.conditions import CONDITION_KEYS, condition_stats
from sciDiT.data.qm9 import QM9_PROPERTIES, QM9_SIZE, edm_property_halves, load_qm9, load_qm9_properties, qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator
from sciDiT.models.latent_guides import HEAD_SIZES
from sciDiT.training.latent_guides import encode_sets, save_property_regressor, test_errors, train_regressor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a noisy-latent QM9 property regressor for classifier guidance of a generator.")
    parser.add_argument("model", help="the generator whose VAE it learns: a DiT-stage checkpoint or a shipped model's name")
    parser.add_argument("--properties", nargs="+", default=list(QM9_PROPERTIES), choices=list(QM9_PROPERTIES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", choices=("B", "train"), default="B", help="QM9 rows: EDM half B of train (default) or all of train")
    parser.add_argument("--size", choices=sorted(HEAD_SIZES), default="H-T")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="read only the first QM9 rows (tests)")
    args = parser.parse_args(argv)
    try:
        gen = load_generator(args.model)
        full = load_qm9(limit=args.limit)
        n_total = len(full) if args.limit is None else QM9_SIZE  # a limited read keeps each row's split
        rows = edm_property_halves(n_total)["B"] if args.rows == "B" else qm9_split(n_total)["train"]
        test = qm9_split(n_total)["test"][: args.test_limit]
        rows, test = rows[rows < len(full)], test[test < len(full)]
        table = load_qm9_properties(tuple(args.properties))
        index = np.asarray(full.store["meta"]["qm9_index"])
        values = {k: table[k].reindex(index).to_numpy() for k in args.properties}
        train_data = full.subset(rows)
        stats = condition_stats(args.properties, [(train_data, {k: v[rows] for k, v in values.items()})])
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def standardised(r: np.ndarray) -> np.ndarray:
        return np.stack([(values[k][r] - stats[k]["mean"]) / stats[k]["std"] for k in args.properties], axis=1)  # [S, P]

    t0 = time.monotonic()
    latents = encode_sets(gen.model, [full[int(i)] for i in rows])
    test_latents = encode_sets(gen.model, [full[int(i)] for i in test])
    encode_seconds = round(time.monotonic() - t0, 1)
    model, facts = train_regressor(latents, standardised(rows), size=args.size, batch_size=args.batch_size, lr=args.lr,
                                   steps=args.steps, minutes=args.minutes, seed=args.seed)
    errors = test_errors(model, test_latents, standardised(test))
    units = {k: CONDITION_KEYS[k].unit for k in args.properties}
    info = {**facts, "rows": f"QM9 {'EDM half B' if args.rows == 'B' else 'train split'}", "encode_seconds": encode_seconds,
            "model": str(args.model), "test_sets": len(test_latents),
            "test_mae": {f"t={t:g}": {k: float(e[j] * stats[k]["std"]) for j, k in enumerate(args.properties)} for t, e in errors.items()},
            "units": units, "domain": Domain.MOLECULE.name.lower()}
    save_property_regressor(args.out, model, args.properties, stats, *gen.model.latent_frame(), info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
