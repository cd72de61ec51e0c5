"""Export REAL test molecules / crystals with their own properties written as requests: an "oracle generator".

    python experiments/inverse_design/oracle_requests.py qm9 --n 500 --out outputs/inverse_design/oracle_qm9.sdf
    python experiments/inverse_design/oracle_requests.py mp20 --n 300 --out outputs/inverse_design/oracle_mp20

Scoring these with ``python -m sciDiT.evaluate ... condition=true`` checks the evaluation itself: a
generator that produced exactly what was requested gets the predictor's test error (QM9), a
space-group match rate near 100% and an element-set hit rate of 100% (MP-20). ``--shuffle`` writes
the requests shuffled among the samples instead (a generator that ignores its requests). The QM9
molecules are the first ``--n`` of the QM9 test split, the crystals the first ``--n`` of MP-20 test;
nothing here is generated.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from sciDiT.data.cdvae import load_cdvae, read_split_csv, split_file
from sciDiT.data.qm9 import QM9_PROPERTIES, load_qm9, load_qm9_properties, qm9_split
from sciDiT.export import MANIFEST, write_cif_folder, write_sdf
from sciDiT.tokenizers import MoleculeTokenizer


def _compact(request: dict) -> str:
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


def qm9(args: argparse.Namespace) -> None:
    full = load_qm9()
    props = load_qm9_properties()
    rows = qm9_split(len(full))["test"][: args.n]
    sets = [full[int(i)] for i in rows]
    values = props.reindex([ts.meta["qm9_index"] for ts in sets])
    requests = [{k: round(float(values[k].iloc[j]), 4) for k in QM9_PROPERTIES} for j in range(len(sets))]
    if args.shuffle:
        order = np.random.default_rng(0).permutation(len(requests))
        requests = [requests[k] for k in order]
    tok = MoleculeTokenizer()
    mols = []
    for ts, req in zip(sets, requests):
        mol = tok.to_rdkit(ts)
        mol.SetProp("request", _compact(req))
        mols.append(mol)
    write_sdf(mols, args.out)
    print(f"wrote {len(mols)} QM9 test molecules with requests to {args.out}")


def mp20(args: argparse.Namespace) -> None:
    sets = [load_cdvae("mp20", "test")[i] for i in range(args.n)]
    table = read_split_csv(split_file("mp20", "test"), limit=args.n)
    requests = [{"spacegroup": int(r["spacegroup.number"]), "elements": sorted(json.loads(r["elements"].replace("'", '"'))),
                 "formation_energy": round(float(r["formation_energy_per_atom"]), 4), "band_gap": round(float(r["band_gap"]), 4)}
                for _, r in table.iterrows()]
    if args.shuffle:
        order = np.random.default_rng(0).permutation(len(requests))
        requests = [requests[k] for k in order]
    write_cif_folder(sets, args.out)
    manifest = pd.read_csv(f"{args.out}/{MANIFEST}", sep="\t", dtype=str, keep_default_na=False)
    manifest["request"] = [_compact(r) for r in requests]
    manifest.to_csv(f"{args.out}/{MANIFEST}", sep="\t", index=False)
    print(f"wrote {len(sets)} MP-20 test crystals with requests to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["qm9", "mp20"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    (qm9 if args.dataset == "qm9" else mp20)(args)


if __name__ == "__main__":
    main()
