"""GFN2-xTB HOMO-LUMO gaps (PyPI ``tblite``, offline): a quantum-chemical check of gap-conditioned molecules.

A single point at the sample's own geometry (no relaxation), neutral. GFN2-xTB is a valence-only
tight-binding method: its gaps are systematically smaller than QM9's B3LYP gaps, so they are
compared with requests through a linear calibration fitted on real QM9 molecules
(``experiments/inverse_design/calibrate_xtb.py``) or by rank (Spearman), never raw. Molecules
with an odd number of electrons have no closed-shell gap: they are counted (``open_shell``), not
scored; an SCF that does not converge is counted as ``failed``.
"""

from __future__ import annotations

import numpy as np

HARTREE_EV = 27.211386
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903


def xtb_gap(numbers: np.ndarray, positions: np.ndarray, charge: int = 0) -> tuple[float | None, str]:
    """``(gap in eV, "ok")`` of a closed-shell molecule, else ``(None, "open_shell" | "failed")``.

    ``numbers``: atomic numbers [N]; ``positions``: Angstrom [N, 3].
    """
    from tblite.interface import Calculator

    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    if (int(numbers.sum()) - charge) % 2:
        return None, "open_shell"
    if not np.isfinite(positions).all():
        return None, "failed"
    try:
        calc = Calculator("GFN2-xTB", numbers, positions * BOHR_PER_ANGSTROM, charge=float(charge), uhf=0)
        calc.set("verbosity", 0)
        res = calc.singlepoint()
    except RuntimeError:  # tblite raises RuntimeError when the SCF does not converge or the input is unphysical
        return None, "failed"
    energies = res.get("orbital-energies")
    occupied = int(round(float(res.get("orbital-occupations").sum()) / 2))  # valence electron pairs
    if occupied < 1 or occupied >= len(energies):
        return None, "failed"
    return float(energies[occupied] - energies[occupied - 1]) * HARTREE_EV, "ok"
