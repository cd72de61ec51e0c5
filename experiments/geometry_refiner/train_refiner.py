"""Train a generator's geometry refiner (:mod:`sciDiT.models.refiner`) on real QM9 molecules and measure it on the test split.

    python experiments/geometry_refiner/train_refiner.py qm9_mp20_cpu --minutes 20 --out outputs/refiner.pt

Training molecules: the QM9 train split with their graphs (``--train`` first rows; the generator's own VAE decodes half of
each batch, :mod:`sciDiT.training.refiner`). The test figures are the first ``--test`` molecules of the QM9 test split
decoded by the generator's VAE from their latents plus ``--test-noise`` standardised units of noise (as a DiT's latents
are off), then refined on their true graph: position RMSD and the mean absolute error of bond lengths, before and after.
``--init`` continues a trained refiner (e.g. with wider noise). ``--extra-sdf`` adds molecules of SD files with their graphs
as written, drawn for ``--extra-share`` of each batch: e.g. the generator's own molecules minimised with MMFF94 (``python -m
sciDiT.sample ... relax=true``), so that the refiner also learns graphs unlike QM9's; their targets are then force-field
geometries, which a model card must say. ``--pair-sdf RAW RELAXED`` adds pairs instead: the generator's molecules as it
decoded them (``refine=false``) and the same molecules minimised from there (``minimise_pairs.py``);
the raw positions are then the input and the minimum, superposed onto them, the target, so that the refiner learns the
errors it meets when sampling. Pack the file into a shipped model with
``python -m sciDiT.pretrained IN OUT refiner=FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch

from sciDiT.batch import TokenSet, collate
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.io import read_molecules
from sciDiT.evaluation.reconstruction import kabsch_superpose
from sciDiT.generate import load_generator
from sciDiT.models.refiner import REFINER_SIZES
from sciDiT.training.precision import resolve_bf16
from sciDiT.training.refiner import ROUGH_KEY, decoded_positions, refine_batch, save_refiner, train_refiner


@torch.no_grad()
def test_figures(refiner, model, sets, noise: float, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """RMSD (A) and bond-length MAE (A) of VAE decodes of ``sets`` at latent ``noise``, before and after refinement."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"rmsd_decoded": 0.0, "rmsd_refined": 0.0, "bond_mae_decoded": 0.0, "bond_mae_refined": 0.0}
    atoms = bonds = 0
    for start in range(0, len(sets), batch_size):
        batch = collate(sets[start : start + batch_size])
        rough = decoded_positions(model, batch, torch.full((batch.batch_size,), noise), gen)  # [B, N, 3]
        refined = refine_batch(refiner, replace(batch, pos=rough))  # [B, N, 3]
        bonded = batch.bonds > 0  # [B, N, N] true bonds (both directions)
        d_true = torch.cdist(batch.pos, batch.pos)  # [B, N, N]
        for name, pos in (("decoded", rough), ("refined", refined)):
            sums[f"rmsd_{name}"] += (pos - batch.pos).square().sum(-1)[batch.mask].sum().item()
            sums[f"bond_mae_{name}"] += (torch.cdist(pos, pos) - d_true).abs()[bonded].sum().item()
        atoms += int(batch.mask.sum())
        bonds += int(bonded.sum())
    return {"rmsd_decoded": (sums["rmsd_decoded"] / atoms) ** 0.5, "rmsd_refined": (sums["rmsd_refined"] / atoms) ** 0.5,
            "bond_mae_decoded": sums["bond_mae_decoded"] / bonds, "bond_mae_refined": sums["bond_mae_refined"] / bonds}


def _minimised(ts: TokenSet) -> bool:
    written = ts.meta["written"]
    return ts.bonds is not None and not (written.HasProp("relaxed") and written.GetIntProp("relaxed") == 0)


def paired_molecules(raw_path: str, relaxed_path: str) -> tuple[list[TokenSet], int]:
    """Training pairs of two SD files of the same molecules in the same order: each minimised molecule of
    ``relaxed_path`` (superposed onto its raw twin) with the raw positions of ``raw_path`` as ``meta[ROUGH_KEY]``;
    and the number of records left out (not minimised, or atoms or graph unlike the raw twin's)."""
    raw, relaxed = read_molecules(raw_path, keep_bonds=True), read_molecules(relaxed_path, keep_bonds=True)
    if len(raw) != len(relaxed):
        raise SciDiTInputError(f"{len(relaxed)} molecules against {len(raw)} in {raw_path}: not the same samples", relaxed_path)
    pairs = []
    for a, b in zip(raw, relaxed):
        same = (a.bonds is not None and _minimised(b) and torch.equal(a.types, b.types) and torch.equal(a.bonds, b.bonds)
                and torch.equal(a.charges, b.charges))  # a graph always comes with its charges (MoleculeTokenizer)
        if same:
            target = kabsch_superpose(b.pos.double().numpy(), a.pos.double().numpy())  # [n, 3] the minimum in the raw frame
            pairs.append(replace(b, pos=torch.as_tensor(target, dtype=b.pos.dtype), meta={ROUGH_KEY: a.pos.clone()}))
    return pairs, len(raw) - len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a generator: shipped model name or DiT-stage checkpoint (its VAE decodes the training inputs)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="R-S", choices=sorted(REFINER_SIZES))
    parser.add_argument("--train", type=int, default=None, help="first rows of the QM9 train split (default: all)")
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--test-noise", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-noise", type=float, default=0.5, help="largest latent noise (standardised units) of the VAE-decoded half")
    parser.add_argument("--pos-noise", type=float, default=0.3)
    parser.add_argument("--dist-weight", type=float, default=10.0, help="weight of the local distance loss against the position loss")
    parser.add_argument("--init", default=None, help="continue from a trained refiner: its file, or a model file / shipped name that packs one "
                        "(e.g. the generator itself); its size replaces --size")
    parser.add_argument("--extra-sdf", nargs="+", default=[], help="SD files of further training molecules with their graphs; "
                        "records with the SD property relaxed = 0 (not minimised) are left out")
    parser.add_argument("--pair-sdf", nargs=2, action="append", default=[], metavar=("RAW", "RELAXED"),
                        help="the generator's molecules as decoded (refine=false) and the same minimised (minimise_pairs.py): raw positions "
                        "in, the minimum out (repeatable)")
    parser.add_argument("--extra-share", type=float, default=0.3, help="share of each batch drawn from the --extra-sdf and --pair-sdf molecules")
    parser.add_argument("--rounds", type=int, default=1, help="passes per training step, each on the last one's positions (loss on the last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device for training, e.g. cuda (the test figures run on CPU)")
    args = parser.parse_args(argv)
    try:
        gen = load_generator(args.ckpt)
        init = None if args.init is None else load_generator(args.ckpt, refiner=args.init).refiner
        if gen.model.vae.bond_head is None:
            raise SciDiTInputError("this generator decodes no molecular graph (no bond head): a refiner needs one", args.ckpt)
        train = [s for s in load_qm9_split("train") if s.bonds is not None][: args.train]
        test = [s for s in load_qm9_split("test") if s.bonds is not None][: args.test]
        extra = [s for path in args.extra_sdf for s in read_molecules(path, keep_bonds=True) if _minimised(s)]
        if args.extra_sdf and not extra:
            raise SciDiTInputError("no molecule with a graph (and relaxed = 1 where the property is written)", args.extra_sdf[0])
        left_out = 0
        for raw_path, relaxed_path in args.pair_sdf:
            pairs, dropped = paired_molecules(raw_path, relaxed_path)
            if not pairs:
                raise SciDiTInputError(f"no minimised molecule with the atoms and graph of its twin in {raw_path}", relaxed_path)
            extra, left_out = extra + pairs, left_out + dropped
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bf16 = resolve_bf16("auto", args.device)
    share = args.extra_share if extra else 0.0
    weights = [(1 - share) / len(train)] * len(train) + [share / len(extra)] * len(extra) if extra else None  # None: uniform, as before
    print(f"training on {len(train)} QM9 molecules and {len(extra)} from {args.extra_sdf + [p for pair in args.pair_sdf for p in pair]} "
          f"({left_out} pairs left out; {share:.0%} of each batch) "
          f"for up to {args.minutes} min (bf16 {bf16})", flush=True)
    refiner, facts = train_refiner(train + extra, gen.model, size=args.size, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                                   minutes=args.minutes, latent_noise=args.latent_noise, pos_noise=args.pos_noise,
                                   dist_weight=args.dist_weight, bf16=bf16, device=args.device, seed=args.seed, init=init,
                                   weights=weights, rounds=args.rounds)
    facts["extra"] = {"files": args.extra_sdf, "pairs": args.pair_sdf, "pairs_left_out": left_out, "molecules": len(extra), "share": share}
    gen.model.cpu()
    facts["test"] = {str(noise): test_figures(refiner, gen.model, test, noise) for noise in args.test_noise}
    facts["command"] = "python experiments/geometry_refiner/train_refiner.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save_refiner(args.out, refiner, gen.model.latent_mean, gen.model.latent_std, facts)
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
