"""Table and plot of generation quality against training budget from the runs of ``train.sh`` + ``evaluate.py``.

    python experiments/quality_vs_budget/summarize.py outputs/budget_10min outputs/budget_30min outputs/budget_90min \
        --plot experiments/quality_vs_budget/metrics_vs_budget.png

Prints a Markdown table (one column per run): training steps, VAE reconstruction, the chosen CFG scale
and every molecule and crystal metric that ``python -m sciDiT.evaluate`` wrote. Runs of today's ``train.sh`` pack both
refiners, so their samples are refined; ``evaluate.py --unrefined`` adds the rows as decoded. Runs of the recipe before
may have a geometry refiner trained afterwards (``<run>/refiner.pt``) and its refined molecules' report
(``<run>/eval/molecules_refined.json``; commands in the README): their rows too, dashed in the plot.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sciDiT.checkpoint import load_checkpoint

MOLECULE_ROWS = [
    ("validity", "validity (strict headline: RDKit sanitizes, no radicals, no retry)"),
    ("validity_connected", "valid and connected (strict, one fragment)"),
    ("validity_perceived", "validity, strict, bonds re-perceived from coordinates"),
    ("validity_rdkit_hueckel_retry", "validity, lenient Hueckel retry (not the headline)"),
    ("validity_openbabel", "validity (OpenBabel -> RDKit, ADiT/EDM path)"),
    ("uniqueness", "uniqueness (over strictly valid)"), ("novelty", "novelty (over strictly valid)"),
    ("connected", "connected (one fragment)"), ("atom_stability", "atom stability (EDM)"), ("molecule_stability", "molecule stability (EDM)"),
    ("tv_atom_counts", "TV atom counts"), ("tv_atom_types", "TV atom types"), ("w1_bond_length", "W1 bond length (A)"),
    ("pb_sanitization", "PoseBusters sanitization"), ("pb_all_atoms_connected", "PoseBusters all atoms connected"),
    ("pb_bond_lengths", "PoseBusters bond lengths"), ("pb_bond_angles", "PoseBusters bond angles"),
    ("pb_internal_steric_clash", "PoseBusters internal steric clash"), ("pb_all", "PoseBusters all checks"),
]
CRYSTAL_ROWS = [
    ("n_samples", "crystals sampled"), ("n_unwritten", "of which no CIF (degenerate lattice, counted invalid)"), ("structural_validity", "structural validity"), ("compositional_validity", "compositional validity (SMACT)"),
    ("validity", "overall validity"), ("uniqueness", "uniqueness (StructureMatcher)"), ("novelty", "novelty vs MP-20 train"),
    ("cov_recall", "COV-R"), ("cov_precision", "COV-P"), ("w1_density", "W1 density (g/cm^3)"), ("w1_num_elements", "W1 number of elements"),
    ("tv_elements", "TV element types"), ("all_metal", "all-metal share of valid crystals"), ("all_metal_reference", "all-metal share of MP-20 test"),
    ("chgnet_energy_per_atom", "CHGNet energy (eV/atom)"), ("chgnet_max_force", "CHGNet max force (eV/A)"),
    ("chgnet_relax_displacement", "CHGNet 50-step relaxation displacement (A)"),
]
OVERLAP_ROW = ("overlapping_atoms", "overlapping atoms (< 0.5 A)")
REFINED_ROWS = [*(row for row in MOLECULE_ROWS if not row[0].startswith("pb_")), OVERLAP_ROW]
REFINED_PLOTTED = [("validity_connected", "QM9 valid and connected, refined"), ("validity_openbabel", "QM9 validity (OpenBabel), refined"),
                   ("molecule_stability", "QM9 molecule stability (EDM), refined")]
PLOTTED = [("molecules", "validity", "QM9 validity (strict, decoded bonds)"), ("molecules", "validity_connected", "QM9 valid and connected"),
           ("molecules", "validity_openbabel", "QM9 validity (OpenBabel)"),
           ("molecules", "atom_stability", "QM9 atom stability"), ("molecules", "molecule_stability", "QM9 molecule stability (EDM)"), ("crystals", "structural_validity", "MP-20 structural validity"),
           ("crystals", "validity", "MP-20 overall validity")]


def load(run: Path) -> dict:
    out = {"name": run.name, "minutes": float(re.search(r"(\d+)min", run.name).group(1))}
    for stage in ("vae", "dit"):
        out[stage] = json.loads((run / stage / "metrics.json").read_text())
    decoder = run / "decoder_ft" / "vae" / "metrics.json"  # today's recipe: the decoder fine-tuned at larger latent noise
    out["decoder"] = json.loads(decoder.read_text()) if decoder.is_file() else {}
    for part in ("molecules", "crystals", "sweep"):
        out[part] = json.loads((run / "eval" / f"{part}.json").read_text())
    pb = run / "eval" / "molecules_pb.json"  # PoseBusters on the first molecules of the file (today's evaluate.py)
    if pb.is_file():
        out["molecules"].update({k: v for k, v in json.loads(pb.read_text()).items() if k.startswith("pb_")})
    for part in ("molecules_unrefined", "crystals_unrefined"):  # today's train.sh packs refiners; evaluate.py --unrefined
        path = run / "eval" / f"{part}.json"
        if path.is_file():
            out[part] = json.loads(path.read_text())
    refined = run / "eval" / "molecules_refined.json"  # the recipe before: a refiner trained after the run, scored by hand
    if refined.is_file() and (run / "refiner.pt").is_file():
        report = json.loads(refined.read_text())
        out["refined"] = report.get("metrics", report)
    for key, name, what in (("refiner_steps", "refiner.pt", "geometry refiner"), ("crystal_refiner_steps", "crystal_refiner.pt", "crystal refiner")):
        if (run / name).is_file():
            out[key] = load_checkpoint(run / name, what)["info"]["steps"]
    return out


def fmt(v, count: bool = False) -> str:
    """A table cell: ``n/a`` for a missing figure, an integer for a count or a whole number above 1, else 3 decimals."""
    if v is None:
        return "n/a"
    return f"{v:.0f}" if count or float(v).is_integer() and abs(v) > 1 else f"{v:.3f}"


def table(runs: list[dict]) -> str:
    head = "| metric | " + " | ".join(f"{r['minutes']:.0f} min" for r in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    lines.append("| VAE / DiT steps | " + " | ".join(f"{r['vae']['steps']:.0f} / {r['dit']['steps']:.0f}" for r in runs) + " |")
    lines.append("| decoder fine-tune steps | " + " | ".join(fmt(r["decoder"]["steps"]) if r["decoder"] else "-" for r in runs) + " |")
    models = [("VAE", "vae")] + ([("fine-tuned decoder", "decoder")] if any(r["decoder"] for r in runs) else [])
    for label, key in (("QM9 match rate", "test/molecule/match_rate"), ("QM9 graph match", "test/molecule/graph_match_rate"),
                       ("QM9 RMSD (A)", "test/molecule/rmsd_mean"), ("MP-20 type accuracy", "test/crystal/type_accuracy"),
                       ("MP-20 StructureMatcher match", "test/crystal/match_rate")):
        for name, part in models:
            lines.append(f"| {name} {label} | " + " | ".join(fmt(r[part].get(key)) for r in runs) + " |")
    lines.append("| CFG scale (molecules / crystals) | " + " | ".join(f"{r['sweep']['best_cfg']['molecule']} / {r['sweep']['best_cfg']['crystal']}" for r in runs) + " |")
    packed = any("molecules_unrefined" in r for r in runs)  # refiners inside the budget and the model
    for key, label in (("refiner_steps", "geometry refiner steps"), ("crystal_refiner_steps", "crystal refiner steps")):
        if any(key in r for r in runs):
            share = " (1/9 of the budget)" if packed else " (1/9 of the budget more)"
            lines.append(f"| {label}{share} | " + " | ".join(fmt(r.get(key)) for r in runs) + " |")
    if packed:
        parts = [("molecules", "molecules (refined, the sampler's default)", [*MOLECULE_ROWS, OVERLAP_ROW]), ("molecules_unrefined", "molecules, positions as decoded (refine=false)", REFINED_ROWS),
                 ("crystals", "crystals (refined, the sampler's default)", CRYSTAL_ROWS), ("crystals_unrefined", "crystals as decoded (refine=false)", CRYSTAL_ROWS)]
    else:
        parts = [("molecules", "molecules", MOLECULE_ROWS), ("crystals", "crystals", CRYSTAL_ROWS)]
    if any("refined" in r for r in runs):
        parts.insert(1, ("refined", "molecules, refined (CFG 1)", REFINED_ROWS))
    for part, title, rows in parts:
        lines.append(f"| **{title}** |" + " |" * len(runs))
        for key, label in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(r.get(part, {}).get(key), count=key.startswith("n_")) for r in runs) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4))
    minutes = [r["minutes"] for r in runs]
    for part, key, label in PLOTTED:
        ax.plot(minutes, [r[part].get(key) for r in runs], "o-", label=label)
    refined = [r for r in runs if "refined" in r]
    for key, label in REFINED_PLOTTED if refined else []:
        ax.plot([r["minutes"] for r in refined], [r["refined"].get(key) for r in refined], "s--", label=label)
    ax.axhline(0.9, color="grey", ls=":", lw=1)
    ax.axhline(0.85, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(minutes, [f"{m:.0f}" for m in minutes])
    ax.set_xlabel("training budget (minutes on one CPU core)")
    ax.set_ylim(0, 1)
    ax.set_title("sciDiT joint QM9 + MP-20, VAE-T + DiT-T")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    runs = sorted((load(r) for r in args.runs), key=lambda r: r["minutes"])
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
