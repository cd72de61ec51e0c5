"""Train a latent discriminator for discriminator guidance (:mod:`sciDiT.training.latent_guides`) of a generator's molecules or crystals.

    python experiments/discriminator_guidance/train_discriminator.py qm9_mp20_cpu --fake 8000 --minutes 10 \\
        --out outputs/discriminator_guidance/qm9.pt

``--positives data`` (default), Kim et al.'s discriminator: positives are the VAE's latents of the first ``--real``
molecules of the QM9 train split (the rows the shipped model trained on), negatives the generator's own latents,
sampled as ``python -m sciDiT.sample`` does by default (Euler 100 steps, CFG 1, EMA DiT, self-conditioning, bf16
where native; sizes from its training histogram). ``--positives valid``: both kinds are the generator's own
``--fake`` samples, split by whether their decoded molecule (joint decoding) is strictly valid and one fragment;
its logit is then the log ratio of the model's valid to invalid samples, and guiding by it tilts the model towards
its valid molecules. ``--domain crystal``: the same on crystals (data: the first MP-20 train crystals; valid: structurally
and compositionally (SMACT) valid, the MP-20 overall validity of ``sciDiT.evaluate``). ``--positives valid+openbabel``: molecules
count as valid only when they are also valid on ADiT's OpenBabel path (bonds perceived from the coordinates), so the tilt
favours graphs and geometries together. ``--autoguidance S``: the model's samples come from its autoguided sampler (the
packed weaker DiT on the late half of the path), the sampler the discriminator will then guide. ``--held-out`` sets of each
kind are kept out of training to measure the accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from sciDiT.batch import Domain
from sciDiT.data.cdvae import load_cdvae
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.flow import AutoGuidance
from sciDiT.evaluation.crystals import composition_validity, structure_validity, to_structure
from sciDiT.evaluation.molecules import canonical_smiles, is_single_fragment, openbabel_molecule, strict_sanitized
from sciDiT.export import to_molecules
from sciDiT.generate import load_generator
from sciDiT.models.latent_guides import HEAD_SIZES
from sciDiT.tokenizers.valence import ValenceGraphDecoder
from sciDiT.training.latent_guides import discriminator_accuracy, encode_sets, pad_latents, save_discriminator, train_discriminator
from sciDiT.training.precision import resolve_bf16

AUTOGUIDANCE_INTERVAL = (0.5, 1.0)  # python -m sciDiT.sample's default autoguidance_interval


def sample_latents(gen, domain: Domain, n: int, seed: int, autoguidance: float = 1.0, batch_size: int = 256) -> list[torch.Tensor]:
    """``n`` latents ``[n_i, L]`` of ``domain`` from the generator's default sampler (``autoguidance`` != 1: guided by
    its packed weaker DiT on the late half of the path, as ``python -m sciDiT.sample autoguidance=`` does)."""
    g = torch.Generator().manual_seed(seed)
    dit = gen.ema_dit if autoguidance == 1.0 else AutoGuidance(gen.ema_dit, gen.weak_dit, autoguidance, *AUTOGUIDANCE_INTERVAL)
    sizes = gen.model.sample_set_sizes(domain, n, g)
    sizes = sizes[torch.argsort(sizes)]  # little padding
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if resolve_bf16("auto", torch.device("cpu")) else contextlib.nullcontext()
    out: list[torch.Tensor] = []
    for chunk in sizes.split(batch_size):
        with autocast:
            x1, mask = gen.model.sample_latents(torch.full((len(chunk),), int(domain)), chunk, dit=dit, generator=g)
        x1 = x1.float()
        out.extend(x1[b, mask[b]].clone() for b in range(len(chunk)))
        print(f"sampled {len(out)} / {n}", flush=True)
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def valid(gen, domain: Domain, latents: list[torch.Tensor], openbabel: bool = False, batch_size: int = 256) -> list[bool]:
    """Whether each latent set decodes as sampling does to valid matter: a strictly valid molecule of one fragment (joint
    decoding; with ``openbabel`` also valid on ADiT's OpenBabel path, bonds perceived from its coordinates), or a
    structurally and compositionally (SMACT) valid crystal."""
    decoder = ValenceGraphDecoder(joint=True, min_prob=1e-2) if domain == Domain.MOLECULE else None
    out: list[bool] = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        x1, mask = pad_latents(chunk)
        sets = gen.model.decode_latents(x1, mask, torch.full((len(chunk),), int(domain)), graph_decoder=decoder).unbatch()
        if domain == Domain.CRYSTAL:
            out += [structure_validity(to_structure(ts)) and composition_validity(ts) for ts in sets]
            continue
        for ts, mol in zip(sets, to_molecules(sets)):
            clean = strict_sanitized(mol)
            ok = clean is not None and is_single_fragment(clean)
            if ok and openbabel:
                perceived = openbabel_molecule(ts)
                ok = perceived is not None and canonical_smiles(perceived) is not None
            out.append(ok)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a DiT-stage checkpoint or a shipped model's name")
    parser.add_argument("--out", required=True)
    parser.add_argument("--domain", choices=("molecule", "crystal"), default="molecule")
    parser.add_argument("--positives", choices=("data", "valid", "valid+openbabel"), default="data",
                        help="data: real latents against the model's samples; valid: the model's valid molecules against its invalid ones; "
                             "valid+openbabel: its molecules valid both on their decoded bonds and on the OpenBabel path against the others")
    parser.add_argument("--autoguidance", type=float, default=1.0,
                        help="sample the model's latents with autoguidance at this scale on [0.5, 1] (the sampler it will guide)")
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
        domain = Domain[args.domain.upper()]
        if args.positives == "valid+openbabel" and domain != Domain.MOLECULE:
            raise SciDiTInputError("--positives valid+openbabel is for molecules (the OpenBabel path perceives molecular bonds)")
        if args.autoguidance != 1.0 and gen.weak_dit is None:
            raise SciDiTInputError("--autoguidance needs a model with a packed weaker DiT (python -m sciDiT.pretrained ... guide=)")
        data = None
        if args.positives == "data":
            data = load_qm9_split("train") if domain == Domain.MOLECULE else load_cdvae("mp20", "train")
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    fake = sample_latents(gen, domain, args.fake, args.seed, args.autoguidance)
    if args.positives == "data":
        real = encode_sets(gen.model, [data[i] for i in range(min(args.real, len(data)))])
        kinds = {"real": f"{'QM9' if domain == Domain.MOLECULE else 'MP-20'} train split, first rows", "fake": "Euler 100, CFG 1, EMA, self-conditioning"}
    else:
        labels = valid(gen, domain, fake, openbabel=args.positives == "valid+openbabel")
        real = [x for x, ok in zip(fake, labels) if ok]
        fake = [x for x, ok in zip(fake, labels) if not ok]
        kinds = {"real": "the model's samples decoding to valid matter (molecules: strict and connected"
                         f"{', and valid on the OpenBabel path' if args.positives == 'valid+openbabel' else ''}; crystals: structural and SMACT)",
                 "fake": "its other samples"}
    prepare_seconds = round(time.monotonic() - t0, 1)
    k = args.held_out
    model, facts = train_discriminator(real[k:], fake[k:], size=args.size, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                                       minutes=args.minutes, seed=args.seed)
    accuracy = discriminator_accuracy(model, real[:k], fake[:k])
    info = {**facts, "model": str(args.model), "positives": args.positives, "autoguidance": args.autoguidance, **kinds,
            "prepare_seconds": prepare_seconds, "held_out_per_kind": k, "held_out_balanced_accuracy": {f"t={t:g}": a for t, a in accuracy.items()}}
    save_discriminator(args.out, model, args.domain, *gen.model.latent_frame(), info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
