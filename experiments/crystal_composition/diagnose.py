"""Where do generated crystals get their extra elements? Per-token type decoding on three latent sources.

    SCIDIT_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python experiments/crystal_composition/diagnose.py \
        outputs/baseline_10min/dit/checkpoints/last.ckpt --n 500 --out experiments/crystal_composition/diagnosis.json

Sources, all decoded by the checkpoint's VAE: (1) the posterior means of real MP-20 test crystals
(reconstruction), (2) the same latents plus Gaussian noise of std sigma in standardised latent
units, (3) DiT samples (Euler, 100 steps, sizes from the training histogram). For each it reports
the per-token type accuracy (real latents only), the decoder's confidence, how many distinct
elements a crystal gets by per-token argmax and by the coherent rule of
:mod:`sciDiT.models.composition` (prior from MP-20 train), the SMACT compositional validity of
both, how often a crystal holds two periodic-table neighbours (same group and adjacent rows, or
same row and adjacent groups), and what the wrong tokens decode to.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch
from pymatgen.core import Element
from scipy.stats import wasserstein_distance

from sciDiT.batch import Domain, collate
from sciDiT.data import load_cdvae
from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity
from sciDiT.flow import integrate, model_velocity
from sciDiT.generate import load_generator
from sciDiT.models.composition import MAX_PRIOR_TOKENS, coherent_types, num_elements_counts, num_elements_log_prior
from sciDiT.tokenizers.elements import MASK_TYPE


def _neighbours(a: int, b: int) -> bool:
    """Periodic-table neighbours: same group, adjacent rows; or same row, adjacent groups."""
    ea, eb = Element.from_Z(a), Element.from_Z(b)
    return (ea.group == eb.group and abs(ea.row - eb.row) == 1) or (ea.row == eb.row and abs(ea.group - eb.group) == 1)


def _has_neighbour_pair(types: list[int]) -> bool:
    s = sorted(set(types))
    return any(_neighbours(a, b) for i, a in enumerate(s) for b in s[i + 1 :])


def _smact(types: list[int]) -> bool:
    return smact_validity(*reduced_counts(types))


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float().clone()
    logits[..., 0] = logits[..., MASK_TYPE] = -torch.inf
    return logits.log_softmax(-1)  # [B, N, T]


def score(name: str, log_probs: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, log_prior: torch.Tensor,
          truth: torch.Tensor | None, ref_num_elements: np.ndarray) -> dict[str, float]:
    """Figures of one latent source (module docstring); ``truth`` [B, N] for real latents, else None."""
    arg = log_probs.argmax(-1) * mask
    coh = coherent_types(log_probs, mask, log_prior)
    conf = log_probs.exp().amax(-1)[mask]
    out: dict[str, float] = {"source": name, "n_crystals": int(mask.shape[0]), "mean_max_prob": float(conf.mean()),
                             "tokens_max_prob_below_0.5": float((conf < 0.5).float().mean())}
    rows = {"argmax": arg, "coherent": coh} | ({"truth": truth} if truth is not None else {})
    for label, types in rows.items():
        sets = [t[m].tolist() for t, m in zip(types, mask)]
        k = np.array([len(set(s)) for s in sets], dtype=float)
        out[f"{label}_mean_num_elements"] = float(k.mean())
        out[f"{label}_w1_num_elements_vs_test"] = float(wasserstein_distance(k, ref_num_elements))
        out[f"{label}_smact"] = float(np.mean([_smact(s) for s in sets]))
        out[f"{label}_neighbour_pair"] = float(np.mean([_has_neighbour_pair(s) for s in sets]))
    if truth is not None:
        ok = truth[mask]
        for label, types in (("argmax", arg), ("coherent", coh)):
            pred = types[mask]
            out[f"{label}_type_accuracy"] = float((pred == ok).float().mean())
            out[f"{label}_composition_exact"] = float(np.mean([Counter(p[m].tolist()) == Counter(t[m].tolist())
                                                               for p, t, m in zip(types, truth, mask)]))
        # what the wrong argmax tokens decode to: an element of the same crystal, a neighbour of the true one, other
        wrong = in_crystal = neighbour = 0
        for p, t, m in zip(arg, truth, mask):
            comp = set(t[m].tolist())
            for pi, ti in zip(p[m].tolist(), t[m].tolist()):
                if pi != ti:
                    wrong += 1
                    in_crystal += pi in comp
                    neighbour += pi not in comp and _neighbours(pi, ti)
        out["wrong_tokens"] = wrong
        out["wrong_is_other_element_of_crystal"] = in_crystal / max(wrong, 1)
        out["wrong_is_neighbour_of_true_element"] = neighbour / max(wrong, 1)
        # do tokens of one true element decode to one element? (share of such groups split over >1 element)
        groups = split = 0
        for p, t, m in zip(arg, truth, mask):
            for e in set(t[m].tolist()):
                sel = (t == e) & m
                if int(sel.sum()) > 1:
                    groups += 1
                    split += len(set(p[sel].tolist())) > 1
        out["same_element_groups_split"] = split / max(groups, 1)
    # latent spread: mean distance of a token's latent to the mean of the tokens of its crystal that share its (decoded) type
    ref_types = truth if truth is not None else arg
    dists = []
    for zz, t, m in zip(z, ref_types, mask):
        for e in set(t[m].tolist()):
            sel = (t == e) & m
            if int(sel.sum()) > 1:
                dists.append(float((zz[sel] - zz[sel].mean(0)).norm(dim=-1).mean()))
    out["latent_spread_same_element"] = float(np.mean(dists)) if dists else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="DiT-stage checkpoint")
    parser.add_argument("--n", type=int, default=500, help="test crystals and DiT samples")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    gen = load_generator(args.ckpt)
    model = gen.model
    train, test = load_cdvae("mp20", "train"), load_cdvae("mp20", "test")
    k_train = torch.tensor([len(set(train[i].types.tolist())) for i in range(len(train))])
    log_prior = num_elements_log_prior(num_elements_counts(torch.as_tensor(train.num_tokens), k_train, MAX_PRIOR_TOKENS))
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.n].tolist()
    batch = collate([test[i] for i in idx])
    ref_k = np.array([len(set(test[i].types.tolist())) for i in idx], dtype=float)
    rows = []
    with torch.no_grad():
        x1 = model.latents(batch)  # [B, N, L] standardised
        noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(args.seed + 1)) * batch.mask[..., None]
        for sigma in [0.0, *args.sigmas]:
            x = x1 + sigma * noise
            logits = model.vae.decode(model.to_vae(x, batch.domain), batch.mask, batch.domain)[0]
            rows.append(score(f"test latents + noise {sigma}", _log_probs(logits), batch.mask, x, log_prior, batch.types, ref_k))
        g = torch.Generator().manual_seed(args.seed)
        sizes = torch.sort(model.sample_set_sizes(Domain.CRYSTAL, args.n, g)).values
        mask = torch.arange(int(sizes.max()))[None] < sizes[:, None]
        dom = torch.full((args.n,), int(Domain.CRYSTAL))
        x0 = torch.randn(*mask.shape, model.vae.latent_dim, generator=g) * mask[..., None]
        vel = model_velocity(gen.ema_dit, mask, {"domain": dom}, self_condition=gen.ema_dit.self_condition)
        xs = integrate(vel, x0, steps=args.steps) * mask[..., None]
        logits = model.vae.decode(model.to_vae(xs, dom), mask, dom)[0]
        rows.append(score("DiT samples", _log_probs(logits), mask, xs, log_prior, None, ref_k))
        # how far DiT latents lie from real latents: per-dimension W1 (standardised units)
        real, fake = x1[batch.mask].numpy(), xs[mask].numpy()
        w1 = [wasserstein_distance(real[:, d], fake[:, d]) for d in range(real.shape[1])]
    report = {"rows": rows, "dit_latent_w1_per_dim": w1, "test_mean_num_elements": float(ref_k.mean())}
    keys = [k for k in rows[0] if k != "source"] + [k for k in rows[-1] if k not in rows[0]]
    print("| figure | " + " | ".join(r["source"] for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for k in dict.fromkeys(keys):
        print(f"| {k} | " + " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for r in rows) + " |")
    print("DiT latent W1 per dim:", " ".join(f"{v:.3f}" for v in w1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
