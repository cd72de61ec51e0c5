"""Give a conditional DiT checkpoint trained before the size tables existed the tables that training now stores.

    SCIDIT_DATA_DIR=../shared/data python experiments/inverse_design/add_size_tables.py \
        outputs/cond_cont/dit/checkpoints/last.ckpt outputs/cond_cont/config.yaml outputs/cond_cont/with_sizes.ckpt

The tables (:func:`sciDiT.data.conditions.size_table`: training set sizes given each condition's value) are
recomputed from the run's own training data, rebuilt from the ``data`` section of its ``config.yaml``
(read as plain YAML; nothing in it is instantiated). The recomputed means and ranges must equal the ones
in the checkpoint, which proves it is the same training data. Writes a copy; the input is not changed.
"""

from __future__ import annotations

import argparse
import math

import torch
import yaml

from sciDiT.checkpoint import load_checkpoint
from sciDiT.training.datamodule import TokenSetDataModule
from sciDiT.training.dit_module import CONDITION_STATS_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="conditional DiT-stage checkpoint")
    parser.add_argument("config", help="the run's config.yaml (its data section names the training data)")
    parser.add_argument("out", help="where to write the copy with the tables")
    args = parser.parse_args()
    raw = load_checkpoint(args.ckpt, "conditional DiT checkpoint")  # weights only
    stored = raw.get(CONDITION_STATS_KEY)
    if not stored:
        raise SystemExit(f"{args.ckpt}: not a conditional checkpoint (no {CONDITION_STATS_KEY})")
    with open(args.config) as fh:
        data = dict(yaml.safe_load(fh)["data"])
    data.pop("_target_", None)
    fresh = TokenSetDataModule(**data).condition_stats()
    for name, old in stored.items():
        new = fresh[name]
        for key in ("mean", "std", "min", "max", "count", "seen"):
            if key in old and not (old[key] == new[key] or (isinstance(old[key], float) and math.isclose(old[key], new[key], rel_tol=1e-9))):
                raise SystemExit(f"{args.config}: condition {name!r} {key} is {new[key]} on this data, {old[key]} in the checkpoint: not its training data")
        stored[name] = {**old, **{k: v for k, v in new.items() if k.startswith("size_")}}
    torch.save(raw, args.out)
    print(f"wrote {args.out}: size tables for {', '.join(stored)}")


if __name__ == "__main__":
    main()
