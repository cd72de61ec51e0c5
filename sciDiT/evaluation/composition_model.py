"""A composition-only regressor of MP-20 properties (formation energy per atom, band gap), fitted on MP-20 train.

The crystal analogue of EDM's property predictor: it is fitted on training data the generator's
requests come from, never on generated samples, and its own MP-20 test MAE is the lower bound of
what it can resolve. Features are the element fractions (Z = 1..94) plus the number of elements and
the fraction-weighted mean and spread of Z; the model is scikit-learn's histogram gradient boosting,
fitted when the evaluation starts (seeded, seconds on 10k rows) rather than loaded from a pickle.
It sees the composition only: it judges what a formation-energy request did to the chemistry, not
the structure (CHGNet, :func:`sciDiT.evaluation.conditional.chgnet_energies`, looks at the structure).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition

from sciDiT.data.conditions import CONDITION_KEYS
from sciDiT.errors import SciDiTInputError

MAX_Z = 94
TARGETS = {k: CONDITION_KEYS[k].column for k in ("formation_energy", "band_gap")}  # user key -> MP-20 CSV column


def composition_features(formulas: Sequence[str | Composition]) -> np.ndarray:
    """[n, MAX_Z + 3] element fractions, number of elements, mean and standard deviation of Z."""
    out = np.zeros((len(formulas), MAX_Z + 3))
    for i, f in enumerate(formulas):
        comp = f if isinstance(f, Composition) else Composition(f)
        frac = comp.fractional_composition
        z = np.array([el.Z for el in frac.elements], dtype=float)
        x = np.array([frac[el] for el in frac.elements], dtype=float)
        keep = z <= MAX_Z
        out[i, (z[keep] - 1).astype(int)] = x[keep]
        mean = float((x * z).sum())
        out[i, MAX_Z:] = len(z), mean, float(np.sqrt((x * (z - mean) ** 2).sum()))
    return out


def read_mp20_targets(path: Path) -> pd.DataFrame:
    """``formula`` and the target columns (user keys) of an MP-20 CDVAE CSV, read without the CIFs."""
    try:
        df = pd.read_csv(path, usecols=["pretty_formula", *TARGETS.values()])
    except (ValueError, OSError) as err:
        raise SciDiTInputError(f"not an MP-20 CSV with pretty_formula/{'/'.join(TARGETS.values())}: {str(err).splitlines()[0]}", path) from None
    return pd.DataFrame({"formula": df["pretty_formula"], **{k: df[c].astype(float) for k, c in TARGETS.items()}})


class CompositionRegressor:
    """One gradient-boosting model per target, fitted on MP-20 train compositions (rows without the target skipped)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.models: dict = {}
        self.test_mae: dict[str, float] = {}

    def fit(self, train: pd.DataFrame, test: pd.DataFrame | None = None) -> "CompositionRegressor":
        from sklearn.ensemble import HistGradientBoostingRegressor

        x = composition_features(list(train["formula"]))
        x_test = composition_features(list(test["formula"])) if test is not None else None
        for key in TARGETS:
            y = train[key].to_numpy()
            known = np.isfinite(y)  # some rows lack a band gap
            model = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, random_state=self.seed).fit(x[known], y[known])
            self.models[key] = model
            if x_test is not None:
                y_test = test[key].to_numpy()
                known = np.isfinite(y_test)
                self.test_mae[key] = float(np.abs(model.predict(x_test[known]) - y_test[known]).mean())
        return self

    def predict(self, key: str, formulas: Sequence[str | Composition]) -> np.ndarray:
        if not len(formulas):
            return np.zeros(0)
        return self.models[key].predict(composition_features(formulas))
