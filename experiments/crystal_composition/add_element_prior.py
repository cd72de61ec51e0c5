"""Give a DiT checkpoint trained before the element-count prior existed the prior that training now stores.

    SCIDIT_DATA_DIR=../shared/data python experiments/crystal_composition/add_element_prior.py \
        outputs/baseline_10min/dit/checkpoints/last.ckpt outputs/baseline_10min/dit/checkpoints/with_prior.ckpt

Counts (atoms, distinct elements) over the MP-20 training split, as
``TokenDataModule.element_count_histogram`` does for a new run whose crystal data is full MP-20 train
(a run trained on a subset, e.g. the quickstart's 2,000 crystals, would have counted that subset).
Writes a copy; the input checkpoint is not changed.
"""

from __future__ import annotations

import argparse

import torch

from sciDiT.batch import Domain
from sciDiT.data import load_cdvae
from sciDiT.models.composition import MAX_PRIOR_TOKENS, num_elements_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="DiT-stage checkpoint")
    parser.add_argument("out", help="where to write the copy with the prior")
    args = parser.parse_args()
    raw = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    train = load_cdvae("mp20", "train")
    counts = num_elements_counts(torch.from_numpy(train.num_tokens), torch.from_numpy(train.num_distinct_types()), MAX_PRIOR_TOKENS)
    table = torch.zeros(len(Domain), *counts.shape)
    table[int(Domain.CRYSTAL)] = counts
    raw["state_dict"]["model.element_counts"] = table
    torch.save(raw, args.out)
    print(f"wrote {args.out}: prior from {len(train)} MP-20 training crystals")


if __name__ == "__main__":
    main()
