"""Train small sciDiT perturbation models on Papalexi 2021 and score them beside the baselines.

    python experiments/perturbseq_sciDiT.py --data-dir ../shared/data --out experiments/perturbseq_sciDiT.md \
        [--splits random_cells replicate unseen] [--seeds-seen 2] [--seeds-unseen 3] [--vae-steps 1500] [--dit-steps 2000]

For every split (sciDiT.perturbation.splits: seen perturbations by random halves of the cells or by
replicate, unseen perturbations with 5 of 25 target genes held out, seeded) it trains a fresh
SciDiTPredictor (cell VAE, then the latent DiT) on the training cells only, predicts the test
perturbations from the split's control cells (``--pred-cells`` per perturbation) and scores it
and every baseline with ``score_perturbations``. Writes a Markdown table and prints timings.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from sciDiT.data.paths import resolve_data_dir
from sciDiT.data.perturbseq import load_papalexi, target_genes
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.perturbation import METRICS, score_perturbations, summarize
from sciDiT.perturbation import BASELINES, SciDiTPredictor, random_cells_split, replicate_split, unseen_target_split

FAMILIES = {"random_cells": "seen, random cells", "replicate": "seen, replicate", "unseen": "unseen, 5 targets"}


def splits(adata, names: list[str], seeds_seen: int, seeds_unseen: int):
    for name in names:
        if name == "random_cells":
            for seed in range(seeds_seen):
                yield FAMILIES[name], random_cells_split(adata, 0.5, seed=seed)
        elif name == "replicate":
            yield FAMILIES[name], replicate_split(adata, "rep_1", "rep_2")
        elif name == "unseen":
            for seed in range(seeds_unseen):
                yield FAMILIES[name], unseen_target_split(adata, 5, seed=seed)
        else:
            raise SciDiTInputError(f"unknown split {name!r} (random_cells, replicate, unseen)")


def run(args: argparse.Namespace, on_split=None) -> pd.DataFrame:
    """Fit and score every split; ``on_split(results so far)`` after each one."""
    adata = load_papalexi(resolve_data_dir(args.data_dir))
    rows = []
    for family, split in splits(adata, args.splits, args.seeds_seen, args.seeds_unseen):
        perts = split.test_perturbations
        t0 = time.time()
        model = SciDiTPredictor(vae_steps=args.vae_steps, dit_steps=args.dit_steps, batch_size=args.batch_size, steps=args.ode_steps, cfg_scale=args.cfg_scale, seed=0)
        model.fit(split.train, extra_targets=target_genes(split.test))
        fit_s = time.time() - t0
        preds = {"scidit": model.predict(split.control, perts, n_cells=args.pred_cells)}
        print(f"{split.name}: sciDiT fit {fit_s:.0f}s, predict {time.time() - t0 - fit_s:.0f}s", flush=True)
        for name, cls in BASELINES.items():
            preds[name] = cls().fit(split.train).predict(split.control, perts)
        for name, pred in preds.items():
            if pred.n_obs == 0:
                continue
            summary = summarize(score_perturbations(pred, split.test, split.control, split.train))
            rows.append({"family": family, "split": split.name, "method": name, **summary, "fit_s": fit_s if name == "scidit" else float("nan")})
            print(f"  {name:15s} nmse_de={summary['nmse_de']:.3f} pearson_delta_de={summary['pearson_delta_de']:.3f} energy={summary['energy']:.3f} ceiling={summary['energy_ceiling']:.3f}", flush=True)
        if on_split is not None:
            on_split(pd.DataFrame(rows))
    return pd.DataFrame(rows)


def markdown(results: pd.DataFrame, command: str, args: argparse.Namespace) -> str:
    def cell(values: pd.Series) -> str:
        v = values.dropna()
        if v.empty:
            return "n/a"
        return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=0):.3f}"

    methods = ["scidit", *BASELINES]
    lines = [
        "# sciDiT vs baselines on Papalexi 2021 (THP-1, 25 knock-outs, 299 genes)",
        "",
        f"Command: `{command}`",
        "",
        f"sciDiT: cell VAE (CellVAE-S: 8 latent tokens x 8 dims) trained {args.vae_steps} steps, then the latent DiT (DiT-T, control-cell",
        f"source moved by the prior mean change, perturbation token set + replicate, CFG scale {args.cfg_scale}) {args.dit_steps} steps, batch {args.batch_size},",
        f"on the 2-core shared CPU; {args.ode_steps} Euler steps; "
        + (f"{args.pred_cells} generated cells per perturbation (from held-out control cells)." if args.pred_cells
           else "one generated cell per held-out control cell and perturbation, as the baselines (the mean of a subsample adds noise of the size of weak effects)."),
        "The prior (`PerturbationFlow.expression_prior`) is the `additive` baseline's shift for a set of targets each",
        "perturbed alone in training and the `linear` baseline's otherwise, so those rows show the prior alone; the",
        "difference is what the DiT adds (the spread of responses over cells and the correction of the mean).",
        "Metrics and baselines exactly as in `perturbseq_baselines.md` (same scorer, same splits, same seeds).",
        "Mean over test perturbations; with several splits in a family, mean ± std over splits.",
        "",
    ]
    for family in dict.fromkeys(results["family"]):
        sub = results[results["family"] == family]
        n_splits = sub["split"].nunique()
        lines += [f"## {family} ({n_splits} split{'s' if n_splits > 1 else ''}: {', '.join(dict.fromkeys(sub['split']))})", ""]
        lines += ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for method in methods:
            m = sub[sub["method"] == method]
            if not m.empty:
                lines.append(f"| {method} | " + " | ".join(cell(m[k]) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("experiments/perturbseq_sciDiT.md"))
    parser.add_argument("--splits", nargs="+", default=["random_cells", "replicate", "unseen"])
    parser.add_argument("--seeds-seen", type=int, default=2, help="seeds of the random-cells split")
    parser.add_argument("--seeds-unseen", type=int, default=3)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--dit-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ode-steps", type=int, default=10)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--pred-cells", type=int, default=None, help="generated cells per perturbation (default: one per control cell, as the baselines)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    command = "python experiments/perturbseq_sciDiT.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(results: pd.DataFrame) -> None:  # after every split, so a long run leaves its finished splits
        args.out.write_text(markdown(results, command.strip(), args))
        print(f"wrote {args.out}", flush=True)

    try:
        run(args, on_split=write)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
