"""Where a geometry refiner loses EDM stability: noisy decodes of real molecules, and force-field starts of any graphs.

    python experiments/geometry_refiner/diagnose.py noise qm9_mp20_cpu --plan fff [--coarse refiner.pt]
    python experiments/geometry_refiner/diagnose.py mmff qm9_mp20_cpu samples.sdf [--n 300]
    python experiments/geometry_refiner/diagnose.py seen samples.sdf --train-sdf extra_a.sdf extra_b.sdf

``noise``: the first ``--n`` QM9 test molecules decoded by the model's VAE from their latents plus Gaussian noise of each
``--noise`` (standardised latent units), then refined on their true graph by the refiners of ``--plan`` in turn (``f`` the
model's refiner, ``c`` the ``--coarse`` one): EDM molecule stability and bond-length MAE against the DFT geometry.
``mmff``: the molecules of an SD file (its graph as written) embedded by RDKit (ETKDG) and minimised with MMFF94, then
refined three times from there: EDM molecule stability before and after, and the O-H bond lengths (mean and spread).
A good start that the refiner makes worse points at the graphs, not at the rough positions.
``seen``: EDM molecule stability of an SD file's molecules as written, apart for those whose graph (canonical SMILES of
the file's bonds) is among the ``--train-sdf`` molecules (a refiner's extra training molecules) and those whose graph is not.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from sciDiT.batch import TokenBatch, collate
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.evaluation.io import read_molecules
from sciDiT.evaluation.molecules import canonical_smiles, edm_stability
from sciDiT.generate import load_generator
from sciDiT.training.refiner import decoded_positions, refine_batch


def edm_stable_share(batch: TokenBatch, pos: torch.Tensor) -> float:
    """Share of the batch's molecules that are EDM-stable (:func:`sciDiT.evaluation.molecules.edm_stability`) at ``pos [B, N, 3]``."""
    return float(np.mean([edm_stability(ts)[2] for ts in replace(batch, pos=pos).unbatch()]))


def noise_sweep(args: argparse.Namespace) -> None:
    gen = load_generator(args.model)
    stages = {"f": gen.refiner, "c": None if args.coarse is None else load_generator(args.model, refiner=args.coarse).refiner}
    test = [s for s in load_qm9_split("test") if s.bonds is not None][: args.n]
    batch = collate(test)
    for noise in args.noise:
        pos = decoded_positions(gen.model, batch, torch.full((batch.batch_size,), noise), torch.Generator().manual_seed(0))
        for stage in args.plan:
            pos = refine_batch(stages[stage], replace(batch, pos=pos))
        mae = (torch.cdist(pos, pos) - torch.cdist(batch.pos, batch.pos)).abs()[batch.bonds > 0].mean().item()
        print(f"plan {args.plan} latent noise {noise}: EDM molecule stability {edm_stable_share(batch, pos):.3f}, "
              f"bond-length MAE {mae:.4f} A", flush=True)


def mmff_start(args: argparse.Namespace) -> None:
    refiner = load_generator(args.model).refiner
    sets = read_molecules(args.sdf, keep_bonds=True)[: args.n]
    mols = list(Chem.SDMolSupplier(str(args.sdf), removeHs=False, sanitize=True))[: args.n]
    kept, starts = [], []
    for ts, mol in zip(sets, mols):
        if mol is None or AllChem.EmbedMolecule(mol, randomSeed=0) != 0:
            continue
        AllChem.MMFFOptimizeMolecule(mol)
        kept.append(ts)
        starts.append(torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32))
    batch = collate(kept)
    mmff = torch.zeros(batch.pos.shape)
    for i, start in enumerate(starts):
        mmff[i, : len(start)] = start
    refined = mmff
    for _ in range(3):
        refined = refine_batch(refiner, replace(batch, pos=refined))
    oh = (batch.types[:, :, None] == 1) & (batch.types[:, None, :] == 8) & (batch.bonds > 0)  # [B, N, N] O-H bonds
    for name, pos in (("as written", batch.pos.float()), ("MMFF94", mmff), ("MMFF94, then refined x3", refined)):
        lengths = torch.cdist(pos, pos)[oh]
        print(f"{name}: EDM molecule stability {edm_stable_share(batch, pos):.3f}, O-H {lengths.mean():.4f} +- "
              f"{lengths.std():.4f} A ({len(kept)} molecules)", flush=True)


def seen_split(args: argparse.Namespace) -> None:
    seen = {canonical_smiles(ts.meta["written"]) for path in args.train_sdf for ts in read_molecules(path, keep_bonds=True)}
    groups: dict[bool, list[bool]] = {True: [], False: []}  # graph among the training molecules -> stable or not
    for ts in read_molecules(args.sdf, keep_bonds=True):
        groups[canonical_smiles(ts.meta["written"]) in seen].append(edm_stability(ts)[2])
    for among, stable in groups.items():
        name = "graph among the training molecules" if among else "graph not among them"
        print(f"{name}: {len(stable)} molecules, EDM molecule stability {np.mean(stable) if stable else float('nan'):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    noise = sub.add_parser("noise")
    noise.add_argument("model")
    noise.add_argument("--plan", default="fff", help="refiners in turn: f the model's, c --coarse")
    noise.add_argument("--coarse", default=None, help="a second refiner file (e.g. one trained on wider noise)")
    noise.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    noise.add_argument("--n", type=int, default=500)
    mmff = sub.add_parser("mmff")
    mmff.add_argument("model")
    mmff.add_argument("sdf")
    mmff.add_argument("--n", type=int, default=300)
    seen = sub.add_parser("seen")
    seen.add_argument("sdf")
    seen.add_argument("--train-sdf", nargs="+", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"noise": noise_sweep, "mmff": mmff_start, "seen": seen_split}[args.mode](args)


if __name__ == "__main__":
    main()
