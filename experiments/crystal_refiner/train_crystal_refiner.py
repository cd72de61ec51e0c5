"""Train a generator's crystal refiner (:mod:`sciDiT.models.crystal_refiner`) on real MP-20 crystals and measure it.

    python experiments/crystal_refiner/train_crystal_refiner.py qm9_mp20_cpu --minutes 20 --out outputs/crystal_refiner.pt

Training crystals: the MP-20 train split; each step the generator's own VAE decodes a batch of them from their latents
plus noise (:mod:`sciDiT.training.crystal_refiner`). The test figures are the first ``--test`` crystals of a seeded
shuffle of the MP-20 test split, decoded from their latents plus ``--test-noise`` standardised units of noise (as a
DiT's latents are off), before and after refinement: element accuracy per token, SMACT validity of the decoded
composition, CDVAE structural validity (no two atoms closer than 0.5 A, a real cell) and the site error (A, after
removing the mean shift). Pack the file into a model with ``python -m sciDiT.pretrained IN OUT crystal_refiner=FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sciDiT.batch import TokenBatch, collate
from sciDiT.data import load_cdvae
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.crystals import composition_validity, structure_validity, to_structure
from sciDiT.generate import load_generator
from sciDiT.pretrained import CRYSTAL_REFINER_KEY, model_path
from sciDiT.tokenizers.crystal import lattice_matrix
from sciDiT.training.crystal_refiner import load_crystal_refiner, save_crystal_refiner, train_crystal_refiner
from sciDiT.training.precision import resolve_bf16


def site_rmsd(decoded: TokenBatch, truth: TokenBatch) -> float:
    """Site RMSD (A) of decoded crystals against the truth, token by token, in the true cell, mean shift removed."""
    disp = decoded.frac - truth.frac
    disp = disp - torch.round(disp)  # [B, N, 3]
    m = truth.mask.float()[..., None]
    disp = (disp - (disp * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)) * m
    cart = torch.einsum("bnk,bkl->bnl", disp.double(), lattice_matrix(truth.lattice.double()))
    return float((cart.square().sum(-1).sum() / truth.mask.sum()).sqrt())


@torch.no_grad()
def test_figures(gen, refiner, sets, noise: float, seed: int = 0) -> dict[str, float]:
    """Element accuracy, SMACT, structural validity and site RMSD of VAE decodes of ``sets`` at latent ``noise``,
    before and after refinement."""
    model = gen.model
    truth = collate(sets)
    x1 = model.latents(truth)
    x1 = x1 + torch.randn(x1.shape, generator=torch.Generator().manual_seed(seed)) * noise * truth.mask[..., None]
    out = {}
    for name, xr in (("decoded", None), ("refined", refiner)):
        dec = model.decode_latents(x1, truth.mask, truth.domain, crystal_refiner=xr)
        acc = float(((dec.types == truth.types) & truth.mask).sum() / truth.mask.sum())
        sets_out = dec.unbatch()
        comp = [composition_validity(ts) for ts in sets_out]
        structural = [structure_validity(to_structure(ts)) for ts in sets_out]
        smact, struct = sum(comp) / len(comp), sum(structural) / len(structural)
        both = sum(c and s for c, s in zip(comp, structural)) / len(comp)
        out.update({f"type_acc_{name}": acc, f"smact_{name}": smact, f"struct_{name}": struct, f"valid_{name}": both,
                    f"site_rmsd_{name}": site_rmsd(dec, truth)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="the generator: a DiT-stage checkpoint, a model file or a shipped name")
    parser.add_argument("--size", default="CR-S")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-noise", type=float, default=0.6, help="decodes at latent noise U[0, this] (standardised units)")
    parser.add_argument("--dist-weight", type=float, default=1.0)
    parser.add_argument("--overlap-share", type=float, default=0.0,
                        help="share of training crystals with one atom put onto another's site (the DiT's overlaps)")
    parser.add_argument("--rounds", type=int, default=1, help="passes per decoding, trained unrolled (loss on the last)")
    parser.add_argument("--init", help="continue this crystal refiner: its file, or a model file or shipped name that packs one")
    parser.add_argument("--bf16", choices=["true", "false", "auto"], default="auto", help="bf16 autocast: auto = where native")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--test-noise", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        gen = load_generator(args.ckpt)
        train, test = load_cdvae("mp20", "train"), load_cdvae("mp20", "test")
        bf16 = resolve_bf16({"true": True, "false": False}.get(args.bf16, "auto"), "cpu")
        init, init_raw = None, {}
        if args.init is not None:
            init, init_raw = load_crystal_refiner(model_path(args.init), gen.model.latent_mean, gen.model.latent_std, packed_key=CRYSTAL_REFINER_KEY)
    except (SciDiTInputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sets = [train[i] for i in range(len(train))]
    print(f"{len(sets)} MP-20 train crystals, {args.size}, up to {args.minutes} min, bf16 {bf16}", flush=True)
    refiner, info = train_crystal_refiner(sets, gen.model, size=args.size, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                                          minutes=args.minutes, latent_noise=args.latent_noise, dist_weight=args.dist_weight,
                                          overlap_share=args.overlap_share, rounds=args.rounds, init=init, bf16=bf16, seed=args.seed)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.test].tolist()
    test_sets = [test[i] for i in idx]
    info["test"] = {str(s): test_figures(gen, refiner, test_sets, s, seed=args.seed + 1) for s in args.test_noise}
    info["data"] = "MP-20 train (the shared copy)"
    if args.init is not None:  # the training facts of the refiner it continued
        info["init"] = {"file": args.init, **{k: v for k, v in init_raw.get("info", {}).items() if k != "test"}}
    save_crystal_refiner(args.out, refiner, gen.model.latent_mean, gen.model.latent_std, info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
