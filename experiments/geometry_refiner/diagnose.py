"""Where a geometry refiner loses EDM stability: noisy decodes of real molecules, and force-field starts of any graphs.

    python experiments/geometry_refiner/diagnose.py noise qm9_mp20_cpu --plan fff [--coarse refiner.pt]
    python experiments/geometry_refiner/diagnose.py mmff qm9_mp20_cpu samples.sdf [--n 300]
    python experiments/geometry_refiner/diagnose.py seen samples.sdf --train-sdf extra_a.sdf extra_b.sdf
    python experiments/geometry_refiner/diagnose.py xtb minimised.sdf [--n 150]
    python experiments/geometry_refiner/diagnose.py bonds samples.sdf [more.sdf ...] [--qm9-test 2000]

``noise``: the first ``--n`` QM9 test molecules decoded by the model's VAE from their latents plus Gaussian noise of each
``--noise`` (standardised latent units), then refined on their true graph by the refiners of ``--plan`` in turn (``f`` the
model's refiner, ``c`` the ``--coarse`` one): EDM molecule stability and bond-length MAE against the DFT geometry.
``mmff``: the molecules of an SD file (its graph as written) embedded by RDKit (ETKDG) and minimised with MMFF94, then
refined three times from there: EDM molecule stability before and after, and the O-H bond lengths (mean and spread).
A good start that the refiner makes worse points at the graphs, not at the rough positions.
``seen``: EDM molecule stability of an SD file's molecules as written, apart for those whose graph (canonical SMILES of
the file's bonds) is among the ``--train-sdf`` molecules (a refiner's extra training molecules) and those whose graph is not.
``xtb``: the first ``--n`` molecules of an SD file (e.g. force-field minima of generated graphs) optimised with GFN2-xTB
(tblite, ASE's BFGS to 0.03 eV/A, the total formal charge of the graph): EDM molecule stability before and after, i.e.
whether quantum-chemical labels would make these graphs more EDM-stable than force-field ones.
``bonds``: for each SD file (first ``--n`` molecules; ``--qm9-test``: also the first QM9 test molecules at their DFT
geometry with their true graph) the EDM-unstable molecules and their most frequent wrong bonds: pairs at a failing atom
whose EDM-perceived order (from the length) differs from the written graph, with the median length.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from sciDiT.batch import TokenBatch, bond_matrix, collate
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.evaluation.io import read_molecules
from sciDiT.evaluation.molecules import canonical_smiles, edm_atom_stable, edm_bond_orders, edm_stability
from sciDiT.generate import load_generator
from sciDiT.tokenizers.elements import symbol
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


def xtb_optimised(args: argparse.Namespace) -> None:
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    before, after, steps = [], [], []
    for ts in read_molecules(args.sdf, keep_bonds=True)[: args.n]:
        atoms = Atoms(numbers=ts.types.numpy(), positions=ts.pos.double().numpy())
        atoms.calc = TBLite(method="GFN2-xTB", charge=int(ts.charges.sum()), verbosity=0)
        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=0.03, steps=200)
        steps.append(opt.nsteps)
        before.append(edm_stability(ts)[2])
        after.append(edm_stability(replace(ts, pos=torch.tensor(atoms.get_positions(), dtype=torch.float32)))[2])
    print(f"{len(before)} molecules: EDM molecule stability {np.mean(before):.3f} as written, {np.mean(after):.3f} after GFN2-xTB "
          f"({np.mean(steps):.0f} BFGS steps on average)")


def wrong_bonds(sets: list, label: str) -> None:
    lengths: dict[str, list[float]] = {}
    unstable = 0
    for ts in sets:
        types, pos = ts.types.numpy(), ts.pos.double().numpy()
        perceived = edm_bond_orders(types, pos)  # [n, n]
        failing = ~edm_atom_stable(types, perceived)  # [n]
        if not failing.any():
            continue
        unstable += 1
        written = bond_matrix(ts.bonds, len(types)).numpy()  # [n, n]
        for i, j in zip(*np.nonzero(np.triu(perceived != written, 1))):
            if failing[i] or failing[j]:
                a, b = sorted((int(types[i]), int(types[j])))
                key = f"{symbol(a)}-{symbol(b)} {written[i, j]} -> {perceived[i, j]}"
                lengths.setdefault(key, []).append(float(np.linalg.norm(pos[i] - pos[j])))
    top = sorted(lengths.items(), key=lambda kv: -len(kv[1]))[:6]
    print(f"{label}: {unstable} of {len(sets)} EDM-unstable; wrong bonds (written -> perceived): "
          + "; ".join(f"{k} {len(v)} (median {np.median(v):.3f} A)" for k, v in top))


def bond_failures(args: argparse.Namespace) -> None:
    for path in args.sdf:
        wrong_bonds(read_molecules(path, keep_bonds=True)[: args.n], path)
    if args.qm9_test:
        wrong_bonds([s for s in load_qm9_split("test") if s.bonds is not None][: args.qm9_test], "QM9 test (DFT, true graphs)")


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
    xtb = sub.add_parser("xtb")
    xtb.add_argument("sdf")
    xtb.add_argument("--n", type=int, default=150)
    bonds = sub.add_parser("bonds")
    bonds.add_argument("sdf", nargs="+")
    bonds.add_argument("--n", type=int, default=1000)
    bonds.add_argument("--qm9-test", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"noise": noise_sweep, "mmff": mmff_start, "seen": seen_split, "xtb": xtb_optimised, "bonds": bond_failures}[args.mode](args)


if __name__ == "__main__":
    main()
