"""Crystal generation metrics on token sets read from exported CIFs (CDVAE / DiffCSP / ADiT conventions).

* ``structural_validity`` (CDVAE): the lattice is a real cell (finite, positive lengths, angles
  that close a cell of positive volume), volume >= 0.1 A^3, and no two atoms (periodic images
  included) closer than 0.5 A.
* ``compositional_validity`` (CDVAE ``smact_validity``, :mod:`sciDiT.tokenizers.oxidation`): one
  element, or only metals (alloys), or some assignment of one oxidation state per element from
  SMACT's original table that is charge neutral for the reduced formula and passes the Pauling
  electronegativity test.
* ``validity`` = both.
* ``uniqueness`` - share of valid crystals that match no earlier one; ``novelty`` - share of valid
  crystals that match no reference (training) crystal; matching is pymatgen
  ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)``, compared only within the same reduced
  formula (a match needs it, so this prunes the search without changing the answer).
* ``w1_density`` (g/cm^3), ``w1_num_elements`` - 1-Wasserstein distances of valid samples vs the
  reference (test) set.
* ``tv_elements`` - total variation distance between the element distributions (over atoms) of valid
  samples and the reference set; ``all_metal`` / ``all_metal_reference`` - the share of valid samples /
  of reference crystals made of metals only, the alloys that pass ``compositional_validity`` without a
  charge check. A sampler that trades diversity for validity (a low ``temperature``) shows here.
* ``cov_recall`` / ``cov_precision`` (optional, slow; CDVAE): CrystalNN site fingerprints
  (averaged over sites) and Magpie composition fingerprints; a pair is close when the structure
  distance <= 0.4 and the standardised composition distance <= 10. CDVAE standardises with
  constants fitted on its training data; we fit the scaler on the reference set (deviation).
* ``chgnet_*`` (optional, slow): CHGNet energy per atom, mean max-force, and mean atom
  displacement after a short FIRE relaxation - a stability proxy. Energy above hull needs a
  phase diagram of reference energies that is not available offline, so it is not reported.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from scipy.stats import wasserstein_distance

from sciDiT.batch import TokenSet
from sciDiT.evaluation.molecules import total_variation
from sciDiT.evaluation.reconstruction import CRYSTAL_MATCHER_KWARGS
from sciDiT.tokenizers import CrystalTokenizer
from sciDiT.tokenizers.oxidation import reduced_counts, smact_validity

MIN_DISTANCE = 0.5  # Angstrom
MIN_VOLUME = 0.1  # Angstrom^3
COV_CUTOFFS = {"struct": 0.4, "comp": 10.0}  # CDVAE's MP-20 thresholds


# -- structural validity --------------------------------------------------------------------------
def to_structure(ts: TokenSet) -> Structure | None:
    """Pymatgen structure of a token set, or None when its lattice is not a real cell."""
    lat = ts.lattice.double().cpu().numpy()
    if not np.isfinite(lat).all() or (lat[:3] <= 0).any() or not np.isfinite(ts.frac.numpy()).all():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = CrystalTokenizer().to_structure(ts)
    except Exception:  # pymatgen raises on angles that cannot close a cell
        return None
    return s if np.isfinite(s.volume) and s.volume > 0 else None


def structure_validity(structure: Structure | None) -> bool:
    """CDVAE structural validity (module docstring)."""
    if structure is None or structure.volume < MIN_VOLUME:
        return False
    if len(structure) == 1:
        return min(structure.lattice.abc) >= MIN_DISTANCE  # nearest neighbour is a periodic image
    dist = structure.distance_matrix + np.eye(len(structure)) * 1e3
    return bool(dist.min() >= MIN_DISTANCE)


# -- compositional validity -----------------------------------------------------------------------
def composition_validity(ts: TokenSet) -> bool:
    return smact_validity(*reduced_counts(ts.types.tolist()))


def formula_validity(formula: str) -> bool:
    """Compositional validity of a formula string such as ``"Li2O"`` (a sample known only by its formula)."""
    comp = Composition(formula)
    return smact_validity(*reduced_counts([el.Z for el, amount in comp.items() for _ in range(int(round(amount)))]))


# -- uniqueness / novelty ---------------------------------------------------------------------------
def _matcher() -> StructureMatcher:
    return StructureMatcher(**CRYSTAL_MATCHER_KWARGS)


def _fits(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(matcher.fit(a, b))
        except Exception:  # pymatgen's lattice search raises on degenerate cells
            return False


def unique_mask(structures: list[Structure]) -> np.ndarray:
    """True for each structure that matches no earlier one (same reduced formula compared only)."""
    matcher = _matcher()
    seen: dict[str, list[Structure]] = {}
    out = np.zeros(len(structures), dtype=bool)
    for i, s in enumerate(structures):
        group = seen.setdefault(s.composition.reduced_formula, [])
        out[i] = not any(_fits(matcher, s, t) for t in group)
        if out[i]:
            group.append(s)
    return out


def novel_mask(structures: list[Structure], reference: list[Structure]) -> np.ndarray:
    """True for each structure that matches no reference structure."""
    matcher = _matcher()
    by_formula: dict[str, list[Structure]] = {}
    for r in reference:
        by_formula.setdefault(r.composition.reduced_formula, []).append(r)
    return np.array([not any(_fits(matcher, s, r) for r in by_formula.get(s.composition.reduced_formula, [])) for s in structures], dtype=bool)


# -- coverage ---------------------------------------------------------------------------------------
def fingerprints(structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """CDVAE fingerprints: mean CrystalNN ``ops`` site fingerprint and Magpie composition features."""
    from matminer.featurizers.composition import ElementProperty
    from matminer.featurizers.site import CrystalNNFingerprint

    site_fp = CrystalNNFingerprint.from_preset("ops")
    comp_fp = ElementProperty.from_preset("magpie", impute_nan=True)
    struct, comp = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in structures:
            try:
                struct.append(np.mean([site_fp.featurize(s, i) for i in range(len(s))], axis=0))
            except Exception:  # CrystalNN fails on pathological neighbour shells
                struct.append(np.full(len(site_fp.feature_labels()), np.nan))
            comp.append(np.asarray(comp_fp.featurize(s.composition), dtype=float))
    return np.array(struct), np.array(comp)


def _cached_fingerprints(structures: list[Structure], cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fingerprints`, stored in ``cache_dir`` under a hash of the structures (a reference set is scored once)."""
    if cache_dir is None:
        return fingerprints(structures)
    digest = hashlib.sha1("".join(s.to(fmt="poscar") for s in structures).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"crystal_fingerprints-{digest}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["struct"], f["comp"]
    struct, comp = fingerprints(structures)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, struct=struct, comp=comp)
    tmp.replace(path)
    return struct, comp


def coverage(sample: list[Structure], reference: list[Structure], cache_dir: Path | None = None) -> dict[str, float]:
    """COV-R (share of reference crystals near some sample) and COV-P (share of samples near some reference).

    ``cache_dir``: keep the reference fingerprints there (about 0.5 s per crystal to compute).
    """
    from scipy.spatial.distance import cdist

    s_struct, s_comp = fingerprints(sample)
    r_struct, r_comp = _cached_fingerprints(reference, cache_dir)
    mean, std = np.nanmean(r_comp, axis=0), np.nanstd(r_comp, axis=0)
    std = np.where(std > 0, std, 1.0)
    s_comp, r_comp = (s_comp - mean) / std, (r_comp - mean) / std
    d_struct = np.nan_to_num(cdist(s_struct, r_struct), nan=np.inf)
    d_comp = np.nan_to_num(cdist(s_comp, r_comp), nan=np.inf)
    close = (d_struct <= COV_CUTOFFS["struct"]) & (d_comp <= COV_CUTOFFS["comp"])
    return {"cov_recall": float(close.any(axis=0).mean()), "cov_precision": float(close.any(axis=1).mean())}


# -- CHGNet stability proxy ---------------------------------------------------------------------------
def chgnet_proxy(structures: list[Structure], relax_steps: int = 50) -> dict[str, float]:
    """CHGNet energy/atom (eV), mean max |force| (eV/A) and mean displacement (A) after ``relax_steps`` FIRE steps."""
    from chgnet.model import CHGNet, StructOptimizer

    model = CHGNet.load(verbose=False)
    preds = model.predict_structure(structures, task="ef", batch_size=16)
    preds = preds if isinstance(preds, list) else [preds]
    energy = [float(p["e"]) for p in preds]
    fmax = [float(np.linalg.norm(p["f"], axis=1).max()) for p in preds]
    optimizer = StructOptimizer(model=model)
    disp = []
    for s in structures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            final = optimizer.relax(s, steps=relax_steps, fmax=0.1, verbose=False)["final_structure"]
        dfrac = final.frac_coords - s.frac_coords
        dfrac -= np.round(dfrac)
        disp.append(float(np.linalg.norm(final.lattice.get_cartesian_coords(dfrac), axis=1).mean()))
    return {"chgnet_energy_per_atom": float(np.mean(energy)), "chgnet_max_force": float(np.mean(fmax)), "chgnet_relax_displacement": float(np.mean(disp))}


# -- everything -------------------------------------------------------------------------------------
@dataclass
class CrystalEvaluation:
    """Flat ``metrics`` plus what the report draws (per-sample validity, densities, element counts)."""

    metrics: dict[str, float]
    structural: np.ndarray
    compositional: np.ndarray
    density: np.ndarray
    num_elements: np.ndarray
    reference_density: np.ndarray | None
    reference_num_elements: np.ndarray | None


def _density_and_elements(structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s.density for s in structures], dtype=float), np.array([len(s.composition.elements) for s in structures], dtype=float)


def element_counts(structures: list[Structure]) -> Counter:
    """Atoms per element symbol over all sites of ``structures``."""
    return Counter(site.specie.symbol for s in structures for site in s)


def all_metal_share(structures: list[Structure]) -> float:
    """Share of ``structures`` whose elements are all metals (NaN for none)."""
    return float(np.mean([all(el.is_metal for el in s.composition.elements) for s in structures])) if structures else float("nan")


def evaluate_crystals(
    sets: list[TokenSet],
    train: list[TokenSet] | None = None,
    test: list[TokenSet] | None = None,
    with_coverage: bool = False,
    with_chgnet: bool = False,
    chgnet_max: int = 100,
    cache_dir: Path | None = None,
    unwritten: Sequence[str] = (),
) -> CrystalEvaluation:
    """All crystal metrics of the module docstring: ``train`` enables novelty, ``test`` the distances/coverage.

    ``chgnet_max``: valid crystals (the first ones) scored by CHGNet; ``cache_dir``: where coverage keeps
    the reference fingerprints. ``unwritten``: formulas of generated samples that have no structure
    (an export's manifest rows with a degenerate lattice); they count as structurally invalid samples
    (``n_unwritten``), with compositional validity from their formula.
    """
    if not sets and not unwritten:
        raise ValueError("evaluate_crystals needs at least one crystal")
    structures = [to_structure(ts) for ts in sets]
    structural = np.array([structure_validity(s) for s in structures] + [False] * len(unwritten), dtype=bool)
    compositional = np.array([composition_validity(ts) for ts in sets] + [formula_validity(f) for f in unwritten], dtype=bool)
    valid = structural & compositional
    m = {
        "n_samples": float(len(sets) + len(unwritten)),
        "n_unwritten": float(len(unwritten)),
        "structural_validity": float(structural.mean()),
        "compositional_validity": float(compositional.mean()),
        "validity": float(valid.mean()),
    }
    valid_structs = [s for s, ok in zip(structures, valid) if ok]
    m["uniqueness"] = float(unique_mask(valid_structs).mean()) if valid_structs else 0.0
    if train is not None:
        ref = [s for s in (to_structure(t) for t in train) if s is not None]
        m["novelty"] = float(novel_mask(valid_structs, ref).mean()) if valid_structs else 0.0
    ok_structs = [s for s in structures if s is not None]
    density, n_elem = _density_and_elements(valid_structs) if valid_structs else (np.zeros(0), np.zeros(0))
    ref_density = ref_nelem = None
    if test is not None:
        test_structs = [s for s in (to_structure(t) for t in test) if s is not None]
        ref_density, ref_nelem = _density_and_elements(test_structs)
        if valid_structs:
            m["w1_density"] = float(wasserstein_distance(density, ref_density))
            m["w1_num_elements"] = float(wasserstein_distance(n_elem, ref_nelem))
            m["tv_elements"] = total_variation(element_counts(valid_structs), element_counts(test_structs))
            m["all_metal"], m["all_metal_reference"] = all_metal_share(valid_structs), all_metal_share(test_structs)
        if with_coverage:
            m.update(coverage(valid_structs, test_structs, cache_dir) if valid_structs else {"cov_recall": 0.0, "cov_precision": 0.0})
    if with_chgnet and ok_structs:
        m.update(chgnet_proxy([s for s in valid_structs or ok_structs][:chgnet_max]))
    return CrystalEvaluation(m, structural, compositional, density, n_elem, ref_density, ref_nelem)
