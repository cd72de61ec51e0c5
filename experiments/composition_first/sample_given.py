"""Sample crystals of given compositions: those of MP-20 test (the structure stage alone, as crystal structure prediction).

    python experiments/composition_first/sample_given.py outputs/comp/dit/checkpoints/last.ckpt --n 1000 --out given/

Takes the first ``n`` MP-20 test cells' compositions, samples one crystal for each with the DiT conditioned on it
(``compositions=`` of :meth:`sciDiT.generate.Generator.generate_token_sets`, ``composition=requested``) and writes
the CIFs and manifest as ``python -m sciDiT.sample`` does; score them with ``python -m sciDiT.evaluate``.
"""

from __future__ import annotations

import argparse
import sys

from sciDiT.data import load_cdvae
from sciDiT.tokenizers.elements import formula
from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="a DiT conditioned on composition (checkpoint or shipped name)")
    ap.add_argument("--out", required=True, help="folder for the CIFs")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--data-dir", default=None, help="the data folder holding mp20/ (default: SCIDIT_DATA_DIR)")
    args = ap.parse_args()
    try:
        test = load_cdvae("mp20", "test", data_dir=args.data_dir)
        compositions = [formula(test[i].types.tolist()) for i in range(min(args.n, len(test)))]
        gen = load_generator(args.ckpt)
        sets = gen.generate_token_sets("crystal", n=len(compositions), compositions=compositions, composition="requested",
                                       seed=args.seed, cfg_scale=args.cfg_scale)
        print(gen.export(sets, args.out))
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
