"""Train the composition model of composition-first crystal generation on MP-20's training cells.

    python experiments/composition_first/train_composition_model.py --minutes 10 --out outputs/composition_model.pt

Reads MP-20 train and val from the data location (``SCIDIT_DATA_DIR`` or ``--data-dir``), fits
:class:`sciDiT.models.composition_model.CompositionModel` to the cells' compositions (one element id per atom),
writes the weights-only file and prints its training facts as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sciDiT.data import load_cdvae
from sciDiT.errors import SciDiTInputError
from sciDiT.models.composition_model import COMPOSITION_SIZES
from sciDiT.tokenizers.elements import NUM_ELEMENTS, element_features
from sciDiT.tokenizers.species import UNBALANCED, SpeciesVocabulary
from sciDiT.tokenizers.substitution import IonicSubstitution
from sciDiT.training.composition_model import load_composition_model, save_composition_model, train_composition_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the composition model file to write")
    ap.add_argument("--size", default="CM-S", choices=sorted(COMPOSITION_SIZES))
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-time cap of training")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout in the transformer blocks (training only)")
    ap.add_argument("--element-features", action="store_true",
                    help="give each element its period, group, block, common oxidation states, electronegativity and metal flag")
    ap.add_argument("--substitution", type=float, default=0.0, metavar="SHARE",
                    help="replace this share of each batch's compositions by an ionic substitute (sciDiT.tokenizers.substitution)")
    ap.add_argument("--species", action="store_true",
                    help="draw ions (element, oxidation state; sciDiT.tokenizers.species) and show the model their running charge")
    ap.add_argument("--unbalanced", default="zero", choices=UNBALANCED,
                    help="with --species: the states of a composition without a neutral assignment: 0 throughout, or each element's first")
    ap.add_argument("--init", default=None, help="continue this composition model file (its sizes and dropout)")
    ap.add_argument("--data-dir", default=None, help="the data folder holding mp20/ (default: SCIDIT_DATA_DIR)")
    args = ap.parse_args()
    try:
        train, val = (load_cdvae("mp20", split, data_dir=args.data_dir) for split in ("train", "val"))
        init, before = load_composition_model(args.init) if args.init else (None, {})
        seen = {int(z) for ts in train for z in ts.types.tolist()}  # a substitute is an element of the training cells
        train_sets, val_sets = [ts.types.tolist() for ts in train], [ts.types.tolist() for ts in val]
        augment = IonicSubstitution(seen) if args.substitution else None
        num_types, features, charges = NUM_ELEMENTS + 1, element_features() if args.element_features else None, None
        if args.species:
            vocab = SpeciesVocabulary(args.unbalanced)
            train_sets, val_sets = [vocab.encode(c) for c in train_sets], [vocab.encode(c) for c in val_sets]
            num_types, charges = len(vocab), (vocab.charges(), vocab.elements())
            features = vocab.features() if args.element_features else None
            if augment is not None:
                substitute = augment
                augment = lambda ids, rng: vocab.encode(substitute(vocab.decode(ids), rng))  # noqa: E731 (the ions of a substitute)
        model, info = train_composition_model(train_sets, val_sets, num_types=num_types, size=args.size, batch_size=args.batch_size,
                                              lr=args.lr, steps=args.steps, minutes=args.minutes, seed=args.seed,
                                              dropout=args.dropout, init=init, type_features=features,
                                              augment=augment, augment_share=args.substitution, charges=charges)
        if init is not None:
            info.update(init=args.init, steps_before=before.get("steps"), steps=info["steps"] + int(before.get("steps", 0)))
        info["data"] = "MP-20 train (the shared CDVAE-layout copy)"
        info["ids"] = f"ions: element and oxidation state (sciDiT.tokenizers.species, unbalanced={args.unbalanced})" if args.species else "elements"
        save_composition_model(args.out, model, info)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({**info, "parameters": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
