"""Print the table of experiments/property_guidance/README.md from the reports of run.sh.

    python experiments/property_guidance/summarize.py OUT

One row per ``OUT/g<scale>/molecules.json`` (guidance), ``OUT/s<k>/molecules.json`` (screening of k candidates by the
latent regressor) and ``OUT/b<k>/molecules.json`` (by half-B SchNets of the decoded molecules)
(``python -m sciDiT.evaluate ... condition=true``), in order of setting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("MAE gap, half-A SchNet (meV)", "mae_gap_mev", "{:.0f}"),
    ("U-bound (shuffled)", "mae_gap_mev_ubound", "{:.0f}"),
    ('"#atoms" on the samples\' sizes', "mae_gap_mev_atoms_baseline_samples", "{:.0f}"),
    ("MAE over strictly valid", "mae_gap_mev_valid", "{:.0f}"),
    ("Spearman(request, xTB gap)", "xtb_gap_spearman", "{:.2f}"),
    ("MAE xTB calibrated (meV)", "mae_gap_mev_xtb_calibrated", "{:.0f}"),
    ("xTB closed shell / requested", None, None),
    ("strict validity", "validity", "{:.1%}"),
    ("valid and connected", "validity_connected", "{:.1%}"),
    ("OpenBabel path", "validity_openbabel", "{:.1%}"),
]
LABELS = {"g": "guidance {}", "s": "screen of {} by the latent regressor", "b": "screen of {} by half-B SchNet"}


def _cell(report: dict, key: str | None, fmt: str | None) -> str:
    if key is None:
        return f"{report.get('n_xtb_ok', 0):.0f} / {report.get('n_xtb_requested', 0):.0f}"
    value = report.get(key)
    return "-" if value is None else fmt.format(value)


def main(out: str) -> None:
    runs = sorted([p for prefix in LABELS for p in Path(out).glob(f"{prefix}*/molecules.json")],
                  key=lambda p: (list(LABELS).index(p.parent.name[0]), float(p.parent.name[1:])))
    if not runs:
        raise SystemExit(f"error: {out}: no g<scale>/, s<k>/ or b<k>/molecules.json reports")
    reports = [json.loads(p.read_text()) for p in runs]
    reports = [r.get("metrics", r) for r in reports]
    print("| setting | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for path, report in zip(runs, reports):
        label = LABELS[path.parent.name[0]].format(path.parent.name[1:])
        print(f"| {label} | " + " | ".join(_cell(report, key, fmt) for _, key, fmt in COLUMNS) + " |")
    first = reports[0]
    print(f"\nhalf-A SchNet test MAE {first.get('mae_gap_mev_predictor_qm9_test', float('nan')):.0f} meV, "
          f'"#atoms" on QM9 test {first.get("mae_gap_mev_atoms_baseline_qm9_test", float("nan")):.0f} meV')


if __name__ == "__main__":
    main(sys.argv[1])
