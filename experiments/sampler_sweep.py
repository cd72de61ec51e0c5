"""Validity against network evaluations (NFE) across solver / step / CFG settings, to pick the sampler.

    python experiments/sampler_sweep.py outputs/dit_size/DiT-T/dit/checkpoints/last.ckpt --n 300

Per setting, on the same seeds (sample ``i`` starts from the same noise in every setting): molecule
validity on the decoded bonds (strict: sanitizes as written, no radicals; ``bond_decoding=joint``, the
default) and valid-and-connected, strict validity with bonds re-perceived from the coordinates, CDVAE
structural validity of crystals, network evaluations per sample and the wall time of sampling and
decoding. The reference row is ADiT's sampler: 100 Euler steps with CFG 2 (200 evaluations).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rdkit.rdBase import BlockLogs

from sciDiT.evaluation.molecules import is_single_fragment, strict_sanitized
from sciDiT.evaluation.quick import quick_validity
from sciDiT.export.sdf import to_molecules
from sciDiT.flow import network_evaluations
from sciDiT.generate import load_generator

SETTINGS = [  # (method, steps, cfg); ADiT's 100 Euler steps at CFG 2 first
    ("euler", 100, 2.0), ("euler", 100, 1.0), ("euler", 50, 1.0), ("euler", 20, 1.0), ("euler", 10, 1.0),
    ("heun", 25, 1.0), ("heun", 10, 1.0), ("heun", 5, 1.0), ("midpoint", 10, 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=300, help="sets per domain and setting")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settings", nargs="*", default=None, help="method:steps:cfg, e.g. euler:20:1 (default: the grid above)")
    args = parser.parse_args()
    settings = [(m, int(s), float(c)) for m, s, c in (x.split(":") for x in args.settings)] if args.settings else SETTINGS
    gen = load_generator(args.ckpt)
    print(f"checkpoint {args.ckpt}, {args.n} sets per domain, seed {args.seed}")
    print("| method | steps | CFG | NFE | valid, decoded bonds | valid and connected | valid, re-perceived | crystal structural | seconds (molecules) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, steps, cfg in settings:
        start = time.time()
        mols = gen.generate_token_sets("molecule", args.n, steps=steps, method=method, cfg_scale=cfg, seed=args.seed, progress=False)
        seconds = time.time() - start
        with BlockLogs():  # failed sanitizations are counted, not printed
            valid = [strict_sanitized(m) for m in to_molecules(mols)]
        xtals = gen.generate_token_sets("crystal", args.n, steps=steps, method=method, cfg_scale=cfg, seed=args.seed, progress=False)
        perceived = quick_validity(mols)["molecule/validity"]
        structural = quick_validity(xtals)["crystal/structural_validity"]
        print(f"| {method} | {steps} | {cfg:g} | {network_evaluations(method, steps, cfg)} | {np.mean([v is not None for v in valid]):.3f} | "
              f"{np.mean([v is not None and is_single_fragment(v) for v in valid]):.3f} | {perceived:.3f} | {structural:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
