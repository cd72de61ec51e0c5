"""Conditional (inverse-design) evaluation: does each exported sample have what its request asked for?

The request of every sample is read from the files (SD property ``request``, manifest column
``request`` or a CIF block's ``_scidit_request`` item / ``# request: {...}`` comment; compact JSON,
issue 13's contract), so any model's outputs are scored by the same code and nothing is taken from
the generator's word. Figures, each over the samples that requested the key (failures stay in the
denominators, or are counted under ``n_*`` names where no value can be given):

* QM9 (EDM's protocol, :mod:`sciDiT.evaluation.property_predictor`): ``mae_<key>_<unit>`` between
  requested and predicted property, on every sample's raw atoms as EDM does (``*_valid`` over the
  strictly valid ones only); beside it ``*_ubound`` (requests shuffled among the samples), and from
  the predictor's checkpoint its QM9-test error (``*_predictor_qm9_test``, the lower bound) and the
  "#atoms" baseline's (``*_atoms_baseline_qm9_test``). GFN2-xTB (:mod:`sciDiT.evaluation.xtb`):
  Spearman between requested and xTB gap, and with a calibration file the MAE of the calibrated
  xTB gap.
* MP-20: space-group match rate of the detected group (pymatgen ``SpacegroupAnalyzer``; headline at
  ``symprec=0.01``, the lenient ``*_symprec0.1`` beside it; angle tolerance 5 degrees) against the
  base rate (how often unconditional samples land in the requested group); exact element-set hit
  rate, and the share that hit *and* are valid (CDVAE structural and SMACT compositional);
  formation energy / band gap MAE of a composition regressor fitted on MP-20 train
  (:mod:`sciDiT.evaluation.composition_model`); optionally CHGNet energy per atom after relaxation,
  a proxy (total energy, not formation energy), compared with the requests by rank; with elemental
  reference energies fitted on MP-20 train (``experiments/inverse_design/fit_chgnet_references.py``)
  it becomes a formation energy, scored by MAE.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sciDiT.batch import Domain, TokenSet
from sciDiT.data.conditions import CONDITION_KEYS, SIZE_KEY
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.crystals import formula_validity, structure_validity
from sciDiT.evaluation.property_predictor import scorable

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from sciDiT.evaluation.composition_model import CompositionRegressor

# request keys a file may carry per domain: the condition registry's, plus the set size
MOLECULE_KEYS = (*(k for k, c in CONDITION_KEYS.items() if c.domain == Domain.MOLECULE), SIZE_KEY)
CRYSTAL_KEYS = (*(k for k, c in CONDITION_KEYS.items() if c.domain == Domain.CRYSTAL), SIZE_KEY)
# name suffix and factor from the request unit (eV for the orbital energies) to the reported MAE unit
MAE_UNITS = {"alpha": ("bohr3", 1.0), "gap": ("mev", 1000.0), "homo": ("mev", 1000.0), "lumo": ("mev", 1000.0),
             "mu": ("debye", 1.0), "Cv": ("cal_mol_k", 1.0)}
SYMPRECS = (0.01, 0.1)  # headline (strict) first
ANGLE_TOLERANCE = 5.0


def parse_request(text: str | None, where: str, keys: Sequence[str]) -> dict:
    """A sample's request from its JSON text (``{}`` when absent); one-line errors for bad JSON and unknown keys."""
    if text is None or not str(text).strip():
        return {}
    try:
        request = json.loads(text)
    except json.JSONDecodeError as err:
        raise SciDiTInputError(f"request is not JSON ({err.msg}): {str(text)[:60]!r}", where) from None
    if not isinstance(request, dict):
        raise SciDiTInputError(f"request must be a JSON object, got {str(text)[:60]!r}", where)
    for key, value in request.items():
        if key not in keys:
            raise SciDiTInputError(f"unknown condition key {key!r} in the request (expected one of {', '.join(keys)})", where)
        if key == "elements":
            if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
                raise SciDiTInputError(f"request 'elements' must be a list of element symbols, got {value!r}", where)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise SciDiTInputError(f"request {key!r} must be a finite number, got {value!r}", where)
    return request


def requests_of(sets: Sequence[TokenSet], keys: Sequence[str], extra: Sequence[tuple[str | None, str]] = ()) -> list[dict]:
    """The parsed request of each set (``meta['request']``, errors naming ``meta['request_where']`` or its source), then of each ``(text, where)`` in ``extra``.

    Raises when no sample carries a request at all: condition scoring is meaningless then.
    """
    texts = [(ts.meta.get("request"), ts.meta.get("request_where") or ts.meta.get("source", f"sample {i}")) for i, ts in enumerate(sets)] + list(extra)
    requests = [parse_request(text, where, keys) for text, where in texts]
    if not any(requests):
        where = texts[0][1].split("#")[0] if texts else None
        raise SciDiTInputError("no sample carries a request (SD property / manifest column / CIF item `request`); "
                               "condition=true scores conditional samples only", where)
    return requests


def _shuffled_mae(pred: np.ndarray, target: np.ndarray, seed: int) -> float:
    """EDM's U-bound: the MAE when the requests are shuffled among the same samples."""
    return float(np.abs(pred - np.random.default_rng(seed).permutation(target)).mean())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")


# -- molecules ----------------------------------------------------------------------------------
def molecule_condition_metrics(
    sets: Sequence[TokenSet],
    requests: Sequence[dict],
    predictors: Sequence[tuple] = (),
    valid: np.ndarray | None = None,
    xtb: bool = False,
    xtb_calibration: dict | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """EDM-protocol MAEs per predictor (``(key, model, baseline, info)`` from ``load_predictor``), atom-count hits, xTB gaps.

    ``valid``: strict validity per sample (for the ``*_valid`` variants); ``xtb_calibration``: ``{"slope",
    "intercept"}`` mapping an xTB gap to a DFT (B3LYP) gap in eV.
    """
    from sciDiT.evaluation.property_predictor import predict

    m: dict[str, float] = {"n_conditional": float(sum(bool(r) for r in requests))}
    ok = np.array([scorable(ts) for ts in sets], dtype=bool)
    counted = Counter(k for r in requests for k in r)
    m.update({f"n_requested_{k}": float(counted[k]) for k in MOLECULE_KEYS if counted[k]})  # also keys no predictor scores
    for key, model, baseline, info in predictors:
        rows = np.array([i for i, r in enumerate(requests) if key in r], dtype=int)
        if not len(rows):
            continue
        unit, scale = MAE_UNITS[key]
        name = f"mae_{key.lower()}_{unit}"
        scored = rows[ok[rows]]
        m[f"n_unscorable_{key}"] = float(len(rows) - len(scored))
        pred = predict(model, [sets[i] for i in scored])
        target = np.array([float(requests[i][key]) for i in scored])
        if len(scored):
            m[name] = float(np.abs(pred - target).mean()) * scale
            m[f"{name}_ubound"] = _shuffled_mae(pred, target, seed) * scale
            sizes = [sets[i].num_tokens for i in scored]  # the "#atoms" baseline on the samples' own sizes: what sizes alone explain
            m[f"{name}_atoms_baseline_samples"] = float(np.abs(baseline(sizes) - target).mean()) * scale
            if valid is not None:
                keep = valid[scored]
                m[f"{name}_valid"] = float(np.abs(pred[keep] - target[keep]).mean()) * scale if keep.any() else float("nan")
        for fact, suffix in (("test_mae", "predictor_qm9_test"), ("test_mae_atom_count_baseline", "atoms_baseline_qm9_test")):
            if fact in info:
                m[f"{name}_{suffix}"] = float(info[fact])
    if counted["num_atoms"]:
        rows = [i for i, r in enumerate(requests) if "num_atoms" in r]
        m["num_atoms_match_rate"] = float(np.mean([sets[i].num_tokens == int(requests[i]["num_atoms"]) for i in rows]))
    if xtb:
        m.update(xtb_metrics(sets, requests, xtb_calibration))
    return m


def xtb_metrics(sets: Sequence[TokenSet], requests: Sequence[dict], calibration: dict | None = None) -> dict[str, float]:
    """GFN2-xTB gaps of the gap-requested samples: counts by outcome, Spearman vs request, calibrated MAE (meV)."""
    from sciDiT.evaluation.xtb import xtb_gap

    rows = [i for i, r in enumerate(requests) if "gap" in r]
    if not rows:
        return {}
    outcome = Counter()
    requested, gaps = [], []
    for i in rows:
        gap, status = xtb_gap(sets[i].types.numpy(), sets[i].pos.numpy()) if scorable(sets[i]) else (None, "failed")
        outcome[status] += 1
        if gap is not None:
            requested.append(float(requests[i]["gap"]))
            gaps.append(gap)
    requested, gaps = np.array(requested), np.array(gaps)
    m = {"n_xtb_requested": float(len(rows)), "n_xtb_ok": float(outcome["ok"]), "n_xtb_open_shell": float(outcome["open_shell"]),
         "n_xtb_failed": float(outcome["failed"]), "xtb_gap_spearman": _spearman(requested, gaps)}
    if len(gaps):
        m["xtb_gap_mean_ev"] = float(gaps.mean())
        if calibration is not None:
            dft = calibration["slope"] * gaps + calibration["intercept"]
            m["mae_gap_mev_xtb_calibrated"] = float(np.abs(dft - requested).mean()) * 1000.0
    return m


# -- crystals -----------------------------------------------------------------------------------
def detect_spacegroup(structure: Structure, symprec: float) -> int | None:
    """International space-group number of a pymatgen Structure (None when spglib finds no cell)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from sciDiT.evaluation.molecules import quiet_c_output

    try:
        with quiet_c_output():  # spglib prints its failed searches on the C level
            return int(SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE).get_space_group_number())
    except (TypeError, ValueError):  # spglib returns no dataset for some distorted or overlapping cells
        return None


def element_set_hit(elements: Sequence[str], requested: Sequence[str]) -> bool:
    """The crystal holds exactly the requested elements (chemical system), nothing more or less."""
    return set(elements) == set(requested)


def chgnet_energies(structures: Sequence[Structure], relax_steps: int = 50) -> np.ndarray:
    """CHGNet energy per atom (eV) of each structure after ``relax_steps`` FIRE steps (a proxy, not a formation energy)."""
    import warnings

    from chgnet.model import CHGNet, StructOptimizer

    optimizer = StructOptimizer(model=CHGNet.load(verbose=False))
    out = []
    for s in structures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traj = optimizer.relax(s, steps=relax_steps, fmax=0.1, verbose=False)["trajectory"]
        out.append(float(traj.energies[-1]) / len(s))
    return np.array(out)


def formation_energy_from_references(compositions: Sequence, energy_per_atom: np.ndarray, references: dict[str, float]) -> np.ndarray:
    """``E - sum_el x_el mu_el`` (eV/atom) per crystal; NaN where an element has no reference energy.

    ``references``: element -> reference energy per atom, e.g. fitted by
    ``experiments/inverse_design/fit_chgnet_references.py``.
    """
    out = np.full(len(compositions), np.nan)
    for i, comp in enumerate(compositions):
        frac = comp.fractional_composition
        if all(el.symbol in references for el in frac.elements):
            out[i] = float(energy_per_atom[i]) - sum(float(x) * references[el.symbol] for el, x in frac.items())
    return out


def crystal_condition_metrics(
    structures: Sequence[Structure | None],
    formulas: Sequence[str],
    requests: Sequence[dict],
    unconditional: Sequence[Structure | None] | None = None,
    regressor: CompositionRegressor | None = None,
    chgnet: bool = False,
    chgnet_max: int = 100,
    chgnet_references: dict[str, float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Space-group match / base rate, element-set hits, regressor MAEs and the CHGNet proxy.

    ``structures``: pymatgen Structures aligned with ``requests`` (None for samples without one, e.g.
    a degenerate lattice: a miss); ``formulas``: each sample's formula (known even without a structure);
    ``unconditional``: structures of unconditional samples for the base rate (default: the samples
    here that request no space group; None entries land in no group but count); ``chgnet_references``: elemental reference energies that turn
    the CHGNet energy of each relaxed sample into a formation energy (``mae_formation_energy_ev_chgnet``).
    """
    m: dict[str, float] = {"n_conditional": float(sum(bool(r) for r in requests))}
    sg_rows = [i for i, r in enumerate(requests) if "spacegroup" in r]
    if sg_rows:
        base_pool = [s for s, r in zip(structures, requests) if "spacegroup" not in r] if unconditional is None else list(unconditional)
        m["n_requested_spacegroup"] = float(len(sg_rows))
        m["n_unconditional_for_base_rate"] = float(len(base_pool))
        for j, prec in enumerate(SYMPRECS):
            suffix = "" if j == 0 else f"_symprec{prec:g}"
            found = [detect_spacegroup(structures[i], prec) if structures[i] is not None else None for i in sg_rows]
            want = [int(requests[i]["spacegroup"]) for i in sg_rows]
            hits = np.array([f == w for f, w in zip(found, want)])
            m[f"spacegroup_match_rate{suffix}"] = float(hits.mean())
            if base_pool:
                base = Counter(detect_spacegroup(s, prec) if s is not None else None for s in base_pool)  # None: no structure, no group
                m[f"spacegroup_base_rate{suffix}"] = float(np.mean([base[w] / len(base_pool) for w in want]))
            if j == 0:
                for group in sorted(set(want)):
                    sel = [k for k, w in enumerate(want) if w == group]
                    m[f"spacegroup_match_rate_sg{group}"] = float(hits[sel].mean())
    el_rows = [i for i, r in enumerate(requests) if "elements" in r]
    if el_rows:
        from pymatgen.core import Composition

        def elements_of(i: int) -> list[str]:
            return [e.symbol for e in Composition(formulas[i]).elements] if structures[i] is not None else []

        m["n_requested_elements"] = float(len(el_rows))
        hit = np.array([element_set_hit(elements_of(i), requests[i]["elements"]) for i in el_rows])
        valid = np.array([structure_validity(structures[i]) and formula_validity(formulas[i]) for i in el_rows])
        m["composition_hit_rate"] = float(hit.mean())
        m["composition_hit_and_valid_rate"] = float((hit & valid).mean())
    for key in ("formation_energy", "band_gap"):
        rows = [i for i, r in enumerate(requests) if key in r]
        if not rows:
            continue
        m[f"n_requested_{key}"] = float(len(rows))
        have = [i for i in rows if structures[i] is not None]
        m[f"n_unscorable_{key}"] = float(len(rows) - len(have))
        target = np.array([float(requests[i][key]) for i in have])
        if regressor is not None and have:
            pred = regressor.predict(key, [formulas[i] for i in have])
            m[f"mae_{key}_ev_regressor"] = float(np.abs(pred - target).mean())
            m[f"mae_{key}_ev_regressor_ubound"] = _shuffled_mae(pred, target, seed)
            if key in regressor.test_mae:
                m[f"mae_{key}_ev_regressor_mp20_test"] = regressor.test_mae[key]
        if key == "formation_energy" and chgnet and have:
            have = have[:chgnet_max]
            energy = chgnet_energies([structures[i] for i in have])
            m["n_chgnet_scored"] = float(len(have))
            m["chgnet_energy_per_atom_mean_ev"] = float(energy.mean())
            m["formation_energy_spearman_chgnet_energy_proxy"] = _spearman(target[: len(have)], energy)
            if chgnet_references is not None:
                derived = formation_energy_from_references([structures[i].composition for i in have], energy, chgnet_references)
                known = np.isfinite(derived)
                m["n_unscorable_chgnet_references"] = float((~known).sum())
                if known.any():
                    m["mae_formation_energy_ev_chgnet"] = float(np.abs(derived[known] - target[: len(have)][known]).mean())
    return m
