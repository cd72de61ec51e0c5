"""Strict validity of VAE decodes of real QM9 test latents under latent noise, from a VAE-stage checkpoint.

    SCIDIT_DATA_DIR=../shared/data python experiments/vae_robustness.py outputs/run/vae/checkpoints/last.ckpt --n 500

The noise is in standardised latent units (per-dimension mean and std over the scored molecules'
atoms), the units the DiT works in, so sigma 0.1 is a DiT error of a tenth of a latent std. For
each sigma: strict validity on the decoded graph (RDKit sanitization of the molecule as written,
no radicals), the same and one fragment, strict validity on bonds perceived from the decoded
coordinates (``DetermineBonds`` at charge 0, no retry), whole graph equal to the truth, and the
RMS error of the true bonds' lengths (A); and the strict validity and graph equality of the
valence-constrained decoding of the same pair probabilities (``bond_decoding=constrained``,
:mod:`sciDiT.tokenizers.valence`), a separately named figure. A VAE-only figure: it needs no DiT, so decoder recipes can
be compared before a DiT is trained on them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from rdkit.Chem import GetMolFrags
from rdkit.rdBase import BlockLogs

from sciDiT.batch import TokenSet, collate
from sciDiT.data import load_qm9_split
from sciDiT.evaluation.molecules import rdkit_molecule, strict_sanitized
from sciDiT.tokenizers import MoleculeTokenizer
from sciDiT.tokenizers.valence import ValenceGraphDecoder
from sciDiT.training.vae_module import VAEModule

BATCH = 128


def bond_length_rmse(decoded: list[TokenSet], truth: list[TokenSet]) -> float:
    """RMS error (A) of the decoded distance of every bonded pair of the true graphs."""
    err = []
    for d, t in zip(decoded, truth):
        i, j = torch.nonzero(torch.triu(t.bonds > 0, 1), as_tuple=True)
        err.append(((d.pos[i] - d.pos[j]).norm(dim=-1) - (t.pos[i] - t.pos[j]).norm(dim=-1)).numpy())
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


def _same_graph(d: TokenSet, t: TokenSet) -> bool:
    return torch.equal(d.types, t.types) and torch.equal(d.bonds, t.bonds) and torch.equal(d.charges, t.charges)


def scores(decoded: list[TokenSet], constrained: list[TokenSet], truth: list[TokenSet]) -> dict[str, float]:
    tok = MoleculeTokenizer()
    with BlockLogs():
        written = [strict_sanitized(tok.to_rdkit(d, bonds=True)) for d in decoded]
        written_c = [strict_sanitized(tok.to_rdkit(d, bonds=True)) if d.meta["graph_source"] == "decoded_constrained" else None
                     for d in constrained]
        perceived = [rdkit_molecule(d) for d in decoded]
    return {
        "valid_decoded_bonds": float(np.mean([m is not None for m in written])),
        "valid_connected_decoded_bonds": float(np.mean([m is not None and len(GetMolFrags(m)) == 1 for m in written])),
        "graph_equal": float(np.mean([_same_graph(d, t) for d, t in zip(decoded, truth)])),
        "valid_constrained_bonds": float(np.mean([m is not None for m in written_c])),
        "valid_connected_constrained_bonds": float(np.mean([m is not None and len(GetMolFrags(m)) == 1 for m in written_c])),
        "graph_equal_constrained": float(np.mean([_same_graph(d, t) for d, t in zip(constrained, truth)])),
        "valid_perceived_bonds": float(np.mean([m is not None for m in perceived])),
        "bond_length_rmse_A": bond_length_rmse(decoded, truth),
    }


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="VAE-stage checkpoint")
    parser.add_argument("--n", type=int, default=500, help="QM9 test molecules (seeded random subset)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    vae = VAEModule.from_checkpoint(args.ckpt).model  # weights only: nothing in the file runs
    data = load_qm9_split("test")
    g = torch.Generator().manual_seed(args.seed)
    truth = [data[i] for i in torch.randperm(len(data), generator=g)[: args.n].tolist()]
    batches = [collate(truth[k : k + BATCH]) for k in range(0, len(truth), BATCH)]
    mus = [vae.encode(b)[0] for b in batches]  # [B, N, L] posterior means
    atoms = torch.cat([mu[b.mask] for mu, b in zip(mus, batches)])  # [atoms, L]
    std = atoms.std(0)  # [L] the latent scale, as the DiT's latent statistics
    report = {"ckpt": args.ckpt, "n": len(truth)}
    for sigma in args.sigmas:
        decoded, constrained = [], []
        for mu, b in zip(mus, batches):
            z = mu + sigma * std * torch.randn(mu.shape, generator=g) * b.mask[..., None]  # [B, N, L]
            decoded += vae.decode_to_batch(z, b.mask, b.domain).unbatch()
            constrained += vae.decode_to_batch(z, b.mask, b.domain, graph_decoder=ValenceGraphDecoder()).unbatch()
        report[f"sigma_{sigma:g}"] = scores(decoded, constrained, truth)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
