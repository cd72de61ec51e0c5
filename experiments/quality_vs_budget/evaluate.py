"""Score one budget run: pick the sampling setting, sample 1,000 per domain, run every metric.

    python experiments/quality_vs_budget/evaluate.py outputs/budget_90min [--n 1000] [--sweep-n 200]

1. Sampler choice on the run's model (``<run>/model.pt``, the DiT with its fine-tuned decoder, written
   by today's ``train.sh``; the DiT's last checkpoint for runs of the former recipe): Euler 100 steps at CFG 1 and 2 (the earlier sweep
   in ``experiments/qm9_mp20_joint_cpu`` found Heun no better), ``--sweep-n`` sets per domain and seed 1,
   scored with the cheap validity of ``sciDiT.evaluation.quick``; each domain keeps its best CFG.
   ``--cfg`` fixes the scale for both domains instead.
2. ``python -m sciDiT.sample`` at that setting, seed 0, ``--n`` sets per domain (refined by the model's packed
   refiners, the sampler's default; ``--unrefined`` also samples with ``refine=false``, into ``*_unrefined``).
3. ``python -m sciDiT.evaluate`` with every metric on: coverage and the CHGNet proxy for crystals
   (``--skip-slow`` leaves those two out); PoseBusters for the first ``--pb-n`` molecules of the SD file
   (its energy-ratio check embeds conformers and takes seconds per molecule), in ``molecules_pb.json``.

Writes ``<run>/eval/{sweep,molecules,molecules_pb,crystals}.json`` (+ the evaluation's Markdown reports) and
``<run>/eval/commands.txt``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sciDiT.evaluation.quick import quick_validity
from sciDiT.generate import load_generator

CFG_SCALES = (1.0, 2.0)
STEPS = 100


def sweep(ckpt: Path, n: int) -> dict[str, dict[str, float]]:
    """Cheap validity per domain and CFG scale: ``{domain: {cfg: validity}}``."""
    gen = load_generator(str(ckpt))
    out: dict[str, dict[str, float]] = {"molecule": {}, "crystal": {}}
    for cfg in CFG_SCALES:
        for domain, key in (("molecule", "molecule/validity"), ("crystal", "crystal/structural_validity")):
            sets = gen.generate_token_sets(domain, n, steps=STEPS, method="euler", cfg_scale=cfg, seed=1, progress=False)
            out[domain][str(cfg)] = quick_validity(sets)[key]
    return out


def write_first_records(sdf: Path, out: Path, n: int) -> None:
    """Copy the first ``n`` records of an SD file verbatim (bonds and properties as the sampler wrote them)."""
    records = sdf.read_text().split("$$$$\n")[:n]
    out.write_text("".join(r + "$$$$\n" for r in records if r.strip()))


def run(cmd: list[str], log: list[str]) -> None:
    log.append(" ".join(cmd))
    start = time.time()
    subprocess.run(cmd, check=True)
    log[-1] += f"   # {time.time() - start:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output folder of experiments/quality_vs_budget/train.sh")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sweep-n", type=int, default=200)
    parser.add_argument("--pb-n", type=int, default=200, help="molecules scored by PoseBusters (the first of the SD file; 0: none)")
    parser.add_argument("--cfg", type=float, default=None, help="this CFG scale for both domains instead of the sweep")
    parser.add_argument("--unrefined", action="store_true",
                        help="also sample and score both domains with refine=false (the positions as decoded), where the model packs refiners")
    parser.add_argument("--skip-slow", action="store_true", help="leave out coverage and the CHGNet proxy (about 10 minutes)")
    args = parser.parse_args()
    ckpt = args.run / "model.pt"
    if not ckpt.is_file():
        ckpt = args.run / "dit" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        sys.exit(f"error: {args.run}: no model.pt and no DiT checkpoint (has the run finished?)")
    eval_dir, sample_dir = args.run / "eval", args.run / "samples"
    eval_dir.mkdir(exist_ok=True)
    sample_dir.mkdir(exist_ok=True)
    if args.cfg is None:
        scores = sweep(ckpt, args.sweep_n)
        best = {d: max(s, key=s.get) for d, s in scores.items()}
    else:
        scores, best = {}, {"molecule": str(args.cfg), "crystal": str(args.cfg)}
    (eval_dir / "sweep.json").write_text(json.dumps({"scores": scores, "best_cfg": best, "steps": STEPS, "n": 0 if args.cfg is not None else args.sweep_n}, indent=2) + "\n")
    print(f"sweep {scores} -> {best}", flush=True)
    py, log = sys.executable, []
    common = [f"ckpt={ckpt}", f"n={args.n}", f"steps={STEPS}", "seed=0"]
    slow = "0" if args.skip_slow else "1"
    variants = [("", [], slow)] + ([("_unrefined", ["refine=false"], "0")] if args.unrefined else [])  # (suffix, options, slow metrics)
    for suffix, options, slow_metrics in variants:
        sdf, xtals = sample_dir / f"molecules{suffix}.sdf", f"{sample_dir / f'crystals{suffix}'}/"
        run([py, "-m", "sciDiT.sample", *common, "domain=molecule", *options, f"cfg_scale={best['molecule']}", f"out={sdf}"], log)
        run([py, "-m", "sciDiT.sample", *common, "domain=crystal", *options, f"cfg_scale={best['crystal']}", f"out={xtals}"], log)
        run([py, "-m", "sciDiT.evaluate", f"molecules={sdf}", "reference=qm9", f"out={eval_dir / f'molecules{suffix}.json'}"], log)
        if args.pb_n > 0 and not suffix:
            subset = sample_dir / f"molecules_first{args.pb_n}.sdf"
            write_first_records(sdf, subset, args.pb_n)
            run([py, "-m", "sciDiT.evaluate", f"molecules={subset}", "reference=qm9", "posebusters=1", f"out={eval_dir / 'molecules_pb.json'}"], log)
        run([py, "-m", "sciDiT.evaluate", f"crystals={xtals}", "reference=mp20", f"coverage={slow_metrics}", f"chgnet={slow_metrics}",
             f"out={eval_dir / f'crystals{suffix}.json'}"], log)
    (eval_dir / "commands.txt").write_text("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
