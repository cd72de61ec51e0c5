"""VAE reconstruction on held-out test sets: atom-type accuracy, match rate and RMSD per domain.

    SCIDIT_DATA_DIR=../shared/data python experiments/vae_reconstruction.py outputs/cpu_run1/vae/checkpoints/last.ckpt --n 1000

Scores a seeded random subset of each test split (QM9 from the fixed seeded split, MP-20 test) with
the same code as the VAE stage's test step (``sciDiT.evaluation.reconstruction``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sciDiT.batch import collate
from sciDiT.data import load_cdvae, load_qm9_split
from sciDiT.evaluation.reconstruction import reconstruction_report
from sciDiT.training.vae_module import VAEModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="VAE-stage checkpoint")
    parser.add_argument("--n", type=int, default=1000, help="test sets per domain")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    model = VAEModule.from_checkpoint(args.ckpt).model  # weights only: nothing in the file runs
    gen = torch.Generator().manual_seed(args.seed)
    datasets = {"qm9": load_qm9_split("test"), "mp20": load_cdvae("mp20", "test")}
    pred, target = [], []
    start = time.time()
    for name, data in datasets.items():
        idx = torch.randperm(len(data), generator=gen)[: args.n].tolist()
        for chunk in range(0, len(idx), args.batch_size):
            batch = collate([data[i] for i in idx[chunk : chunk + args.batch_size]])
            pred += model.reconstruct(batch).unbatch()
            target += batch.unbatch()
    report = reconstruction_report(pred, target)
    report["seconds"] = time.time() - start
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
