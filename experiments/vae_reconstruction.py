"""VAE reconstruction on held-out test sets: atom-type accuracy, match rate and RMSD per domain.

    SCIDIT_DATA_DIR=../shared/data python experiments/vae_reconstruction.py outputs/cpu_run1/vae/checkpoints/last.ckpt --n 1000

Scores a seeded random subset of each test split (QM9 from the fixed seeded split, MP-20 test) with
the same code as the VAE stage's test step (``sciDiT.evaluation.reconstruction``). Beside it,
``crystal/spacegroup_kept_symprec<tol>``: the share of test crystals whose decoded structure keeps the
space group spglib finds in the input (pymatgen ``SpacegroupAnalyzer``; degenerate decodes count as
lost), the ceiling of what space-group conditioning can reach through this decoder.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sciDiT.batch import Domain, TokenSet, collate
from sciDiT.data import load_cdvae, load_qm9_split
from sciDiT.evaluation.conditional import detect_spacegroup
from sciDiT.evaluation.reconstruction import reconstruction_report, safe_structure
from sciDiT.tokenizers import CrystalTokenizer
from sciDiT.training.vae_module import VAEModule

SYMPRECS = (0.01, 0.1)


def spacegroup_kept(pred: list[TokenSet], target: list[TokenSet]) -> dict[str, float]:
    """Share of crystals whose decode has the input's space group, per symprec."""
    tok = CrystalTokenizer()
    pairs = [(safe_structure(tok, p), tok.to_structure(t)) for p, t in zip(pred, target) if t.domain == Domain.CRYSTAL]
    out = {}
    for symprec in SYMPRECS:  # a degenerate decode (None) has lost its group
        kept = [s_pred is not None and (group := detect_spacegroup(s_true, symprec)) is not None
                and detect_spacegroup(s_pred, symprec) == group for s_pred, s_true in pairs]
        out[f"crystal/spacegroup_kept_symprec{symprec:g}"] = sum(kept) / len(kept) if kept else float("nan")
    return out


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
    report.update(spacegroup_kept(pred, target))
    report["seconds"] = time.time() - start
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
