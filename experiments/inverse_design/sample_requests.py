"""Sample the request sets of experiments/inverse_design/README.md from a conditional checkpoint.

    python experiments/inverse_design/sample_requests.py outputs/cond/dit/checkpoints/last.ckpt --out outputs/cond/requests

Writes, each record carrying its request (SD property / manifest column ``request``):
* ``molecules.sdf`` - for each QM9 property, ``--per-value`` molecules at each of five values (the
  training mean + {-1.28, -0.52, 0, 0.52, 1.28} training std, i.e. the 10/30/50/70/90% points of a
  normal fit), the other properties null; the gap rows are the gap sweep judged by xTB;
* ``molecules_unconditional.sdf`` - the same model with every condition null (validity reference);
* ``crystals_spacegroup/`` - the ten most common MP-20 training space groups, ``--per-group`` each;
* ``crystals_elements/`` - the ten most common MP-20 training element sets, ``--per-group`` each;
* ``crystals_unconditional/`` - the space-group base rate;
* ``crystals_spacegroup_elements/`` - for each of the ten most common MP-20 training space groups, its most
  common element set among the training crystals in that group, ``--per-group`` each, both requested at once
  (models of ``experiment=mp20_spacegroup_cond_cpu``);
* ``crystals_formation_energy/``, ``crystals_band_gap/`` - formation energies / band gaps at the five points
  above of the training distribution, ``--per-group`` each, each value with two of the ten most common space
  groups (an asymmetric-unit model needs a group).
``--guidance``: CFG scale on each request's condition (default 1). ``--property-guide FILE --property-guidance S``:
steer the molecule requests with a noisy-latent property regressor instead of (or beside) a conditional DiT
(experiments/property_guidance); the checkpoint may then be unconditional. ``--properties``: which QM9 properties to sweep. ``--property-screen K``: each molecule request keeps the best of K candidates by
the reading of ``--screen-predictor`` (half-B SchNets on the decoded molecules; K decodings), else by the regressor's
reading of the latents (generate-and-screen, K times the network evaluations). ``--composition requested``: element-set
requests enforced at decoding (each crystal uses exactly the requested elements), a separate figure from
the conditioning alone (default ``argmax``); ``balanced``: charge-balanced compositions (SMACT). ``--sizes marginal``: atom counts of requests from the unconditional
histogram instead of the training sizes given the requested value (EDM's protocol, the default). ``--relax``: molecules
written with force-field relaxed geometries on their decoded graphs (a separately named, lenient figure). ``--parts``: which of the files above to write (default all). Molecule bonds: ``--bond-decoding`` (default joint, as sampling; the other figures are reruns with constrained / argmax).
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

import pandas as pd

from sciDiT.data.cdvae import load_cdvae
from sciDiT.data.paths import resolve_data_dir
from sciDiT.data.qm9 import QM9_PROPERTIES
from sciDiT.generate import load_generator
from sciDiT.tokenizers.elements import symbol

Z_VALUES = (-1.28, -0.52, 0.0, 0.52, 1.28)
PARTS = ("molecules", "spacegroup", "elements", "unconditional", "spacegroup_elements", "formation_energy", "band_gap")


def _renumber(sets: list) -> list:
    for i, ts in enumerate(sets):
        ts.meta = {**ts.meta, "sample_index": i}
    return sets


def _guide(key: str, scale: float) -> dict[str, float] | None:
    return None if scale == 1.0 else {key: scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="DiT-stage checkpoint of experiment=qm9_mp20_cond_cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-value", type=int, default=40, help="molecules per requested property value")
    parser.add_argument("--per-group", type=int, default=30, help="crystals per requested space group / element set")
    parser.add_argument("--n-unconditional", type=int, default=400)
    parser.add_argument("--bond-decoding", default="joint", choices=("argmax", "constrained", "joint"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance on the requested condition (1 = plain conditional)")
    parser.add_argument("--composition", default="argmax", choices=("argmax", "coherent", "balanced", "requested"),
                        help="crystal types (requested: exactly the requested elements; balanced: charge balanced)")
    parser.add_argument("--sizes", default="conditional", choices=("conditional", "marginal"),
                        help="atom counts of requests: from the training sizes given the requested value (EDM's protocol) or the unconditional histogram")
    parser.add_argument("--relax", action="store_true", help="write force-field relaxed molecule geometries (a separate, lenient figure)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which request sets to sample")
    parser.add_argument("--autoguidance", type=float, default=1.0, help="autoguidance scale on [0.5, 1] (needs a packed or --guide weak DiT)")
    parser.add_argument("--guide", default=None, help="a weaker DiT-stage checkpoint on the same VAE, for --autoguidance")
    parser.add_argument("--property-guide", default=None, help="a noisy-latent property regressor on the same VAE (classifier guidance)")
    parser.add_argument("--property-guidance", type=float, default=1.0, help="its classifier guidance scale")
    parser.add_argument("--property-screen", type=int, default=1, help="candidates per molecule request, screened by --screen-predictor or the regressor")
    parser.add_argument("--screen-predictor", default=None, help="half-B QM9 property predictors (train_property_predictor.py --half B) that screen")
    parser.add_argument("--properties", nargs="+", default=list(QM9_PROPERTIES), choices=list(QM9_PROPERTIES),
                        help="the QM9 properties swept in the molecules part")
    args = parser.parse_args()

    gen = load_generator(args.ckpt, guide=args.guide, property_guide=args.property_guide, screen_predictor=args.screen_predictor)
    stats = gen.request_stats
    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(progress=False, seed=args.seed, condition_sizes=args.sizes == "conditional", autoguidance=args.autoguidance,
                  property_guidance=args.property_guidance)
    screen = {"property_screen": args.property_screen} if args.property_screen > 1 else {}
    if "molecules" in args.parts:
        mols = []
        for key in args.properties:
            for k, z in enumerate(Z_VALUES):
                value = round(stats[key]["mean"] + z * stats[key]["std"], 3)
                mols += gen.generate_token_sets("molecule", args.per_value, condition={key: value}, guidance=_guide(key, args.guidance) if key in gen.condition_stats else None,
                                                bond_decoding=args.bond_decoding, **{**common, **screen, "seed": args.seed + 1000 * k})
        gen.export(_renumber(mols), args.out / "molecules.sdf", relax=args.relax)
    if "unconditional" in args.parts:
        gen.export(gen.generate_token_sets("molecule", args.n_unconditional, bond_decoding=args.bond_decoding, **common),
                   args.out / "molecules_unconditional.sdf", relax=args.relax)
        gen.export(gen.generate_token_sets("crystal", args.n_unconditional, **common), args.out / "crystals_unconditional")
    if {"spacegroup", "spacegroup_elements", "formation_energy", "band_gap"} & set(args.parts):
        mp20_train = pd.read_csv(resolve_data_dir() / "mp20" / "train.csv.gz", usecols=["spacegroup.number", "elements"])
        groups = [int(g) for g, _ in Counter(mp20_train["spacegroup.number"]).most_common(10)]
    if "spacegroup" in args.parts:
        xtals = []
        for k, group in enumerate(groups):
            xtals += gen.generate_token_sets("crystal", args.per_group, condition={"spacegroup": group}, composition=args.composition,
                                             guidance=_guide("spacegroup", args.guidance), **{**common, "seed": args.seed + k})
        gen.export(_renumber(xtals), args.out / "crystals_spacegroup")
    if "elements" in args.parts:
        train = load_cdvae("mp20", "train")
        systems = Counter(tuple(sorted({symbol(int(z)) for z in train[i].types.tolist()})) for i in range(len(train)))
        xtals = []
        for k, (system, _) in enumerate(systems.most_common(10)):
            xtals += gen.generate_token_sets("crystal", args.per_group, condition={"elements": list(system)}, composition=args.composition,
                                             guidance=_guide("elements", args.guidance), **{**common, "seed": args.seed + k})
        gen.export(_renumber(xtals), args.out / "crystals_elements")
    if "spacegroup_elements" in args.parts:
        pairs = Counter((int(g), tuple(sorted(ast.literal_eval(e)))) for g, e in zip(mp20_train["spacegroup.number"], mp20_train["elements"]))
        xtals = []
        for k, group in enumerate(groups):
            system = max((pair for pair in pairs if pair[0] == group), key=pairs.__getitem__)[1]
            xtals += gen.generate_token_sets("crystal", args.per_group, condition={"spacegroup": group, "elements": list(system)},
                                             composition=args.composition, guidance=_guide("elements", args.guidance), **{**common, "seed": args.seed + k})
        gen.export(_renumber(xtals), args.out / "crystals_spacegroup_elements")
    for key in ("formation_energy", "band_gap"):
        if key not in args.parts:
            continue
        xtals = []
        for k, z in enumerate(Z_VALUES):  # clipped to the training range (band gaps: many metals at 0 eV)
            value = round(min(max(stats[key]["mean"] + z * stats[key]["std"], stats[key]["min"]), stats[key]["max"]), 3)
            for j in range(2):  # two groups per value, so the ten groups are each requested once
                group = groups[(2 * k + j) % len(groups)]
                xtals += gen.generate_token_sets("crystal", args.per_group // 2, condition={key: value, "spacegroup": group},
                                                 guidance=_guide(key, args.guidance), **{**common, "seed": args.seed + 10 * k + j})
        gen.export(_renumber(xtals), args.out / f"crystals_{key}")

if __name__ == "__main__":
    main()
