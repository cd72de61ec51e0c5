"""Cheap validity of generated sets across solver / step / CFG settings, to pick the sampling setting.

    python experiments/sampler_sweep.py outputs/cpu_run1/dit/checkpoints/last.ckpt --n 200

Prints, per setting, the RDKit validity of molecules and the CDVAE structural validity of crystals
(``sciDiT.evaluation.quick``) and the sampling time.
"""

from __future__ import annotations

import argparse
import time

from sciDiT.evaluation.quick import quick_validity
from sciDiT.generate import load_generator

SETTINGS = [("euler", 100, 1.0), ("heun", 50, 1.0), ("euler", 100, 2.0), ("heun", 50, 2.0), ("euler", 20, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=200, help="sets per domain and setting")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    gen = load_generator(args.ckpt)
    print("| method | steps | cfg | molecule validity | crystal structural validity | seconds |")
    print("|---|---|---|---|---|---|")
    for method, steps, cfg in SETTINGS:
        start = time.time()
        sets = []
        for domain in ("molecule", "crystal"):
            sets += gen.generate_token_sets(domain, args.n, steps=steps, method=method, cfg_scale=cfg, seed=args.seed, progress=False)
        scores = quick_validity(sets)
        print(f"| {method} | {steps} | {cfg} | {scores['molecule/validity']:.3f} | {scores['crystal/structural_validity']:.3f} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
