"""Train a latent discriminator for discriminator guidance (:mod:`sciDiT.training.latent_guides`) of a generator's molecules.

    python experiments/discriminator_guidance/train_discriminator.py qm9_mp20_cpu --fake 8000 --minutes 10 \\
        --out outputs/discriminator_guidance/qm9.pt

Real sets: the VAE's latents of the first ``--real`` molecules of the QM9 train split (the rows the shipped model
trained on). Fake sets: the generator's own latents, sampled as ``python -m sciDiT.sample`` does by default
(Euler 100 steps, CFG 1, EMA DiT, self-conditioning, bf16 where native; sizes from its training histogram).
``--held-out`` sets of each kind are kept out of training to measure the discriminator's accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from sciDiT.batch import Domain
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator
from sciDiT.models.latent_guides import HEAD_SIZES
from sciDiT.training.latent_guides import discriminator_accuracy, encode_sets, save_discriminator, train_discriminator
from sciDiT.training.precision import resolve_bf16


def sample_latents(gen, n: int, seed: int, batch_size: int = 256) -> list[torch.Tensor]:
    """``n`` molecule latents ``[n_i, L]`` of the generator's default sampler."""
    g = torch.Generator().manual_seed(seed)
    sizes = gen.model.sample_set_sizes(Domain.MOLECULE, n, g)
    sizes = sizes[torch.argsort(sizes)]  # little padding
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if resolve_bf16("auto", torch.device("cpu")) else contextlib.nullcontext()
    out: list[torch.Tensor] = []
    for chunk in sizes.split(batch_size):
        with autocast:
            x1, mask = gen.model.sample_latents(torch.full((len(chunk),), int(Domain.MOLECULE)), chunk, dit=gen.ema_dit, generator=g)
        x1 = x1.float()
        out.extend(x1[b, mask[b]].clone() for b in range(len(chunk)))
        print(f"sampled {len(out)} / {n}", flush=True)
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a DiT-stage checkpoint or a shipped model's name")
    parser.add_argument("--out", required=True)
    parser.add_argument("--real", type=int, default=20000)
    parser.add_argument("--fake", type=int, default=8000)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--size", choices=sorted(HEAD_SIZES), default="H-T")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        gen = load_generator(args.model)
        data = load_qm9_split("train", limit=None)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    real = encode_sets(gen.model, [data[i] for i in range(min(args.real, len(data)))])
    fake = sample_latents(gen, args.fake, args.seed)
    prepare_seconds = round(time.monotonic() - t0, 1)
    k = args.held_out
    model, facts = train_discriminator(real[k:], fake[k:], size=args.size, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                                       minutes=args.minutes, seed=args.seed)
    accuracy = discriminator_accuracy(model, real[:k], fake[:k])
    info = {**facts, "model": str(args.model), "real": "QM9 train split, first rows", "fake": "Euler 100, CFG 1, EMA, self-conditioning",
            "prepare_seconds": prepare_seconds, "held_out_per_kind": k, "held_out_balanced_accuracy": {f"t={t:g}": a for t, a in accuracy.items()}}
    save_discriminator(args.out, model, "molecule", gen.model.latent_mean, gen.model.latent_std, info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
