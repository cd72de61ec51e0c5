"""Conditions from the data: property values per token set, their training statistics, and requests.

A *condition* is a per-set label the DiT can be conditioned on (``sciDiT.models.dit`` condition
registry). This module is the only code that knows what the condition keys mean; the models see
tensors. Keys, units and kinds (``docs``: REQUEST_FORMAT of issue 13):

==================  ========  =========  ==============================================================
key                 domain    kind       meaning, unit (source column)
==================  ========  =========  ==============================================================
alpha               molecule  vector     isotropic polarizability, Bohr^3 (qm9pack ``Polarizability_bohr3``)
gap                 molecule  vector     HOMO-LUMO gap, eV (``HOMO_LUMO_gap_au`` x 27.211386)
homo                molecule  vector     HOMO energy, eV (``HOMO_au`` x 27.211386)
lumo                molecule  vector     LUMO energy, eV (``LUMO_au`` x 27.211386)
mu                  molecule  vector     dipole moment, Debye (``Dipole_debye``)
Cv                  molecule  vector     heat capacity at 298 K, cal/(mol K) (``Heatcapacity_Cv_cal_mol_K``)
spacegroup          crystal   class      international space-group number 1..230 (MP-20 ``spacegroup.number``)
formation_energy    crystal   vector     formation energy, eV/atom (MP-20 ``formation_energy_per_atom``)
band_gap            crystal   vector     band gap, eV (MP-20 ``band_gap``)
elements            crystal   token_set  the exact element set (chemical system), e.g. [Li, Fe, P, O]
composition         crystal   token_set  the cell's composition, e.g. Li4Fe4P4O16: one id per atom (fixes num_atoms)
==================  ========  =========  ==============================================================

Each key is its own DiT condition, so a set without a value (a crystal has no HOMO-LUMO gap, a
molecule no space group; a request that names only ``gap``) gets that condition's null embedding
and nothing else changes. Scalars are standardised by the mean and standard deviation of the
training split; the statistics (and the training range, which bounds requests) travel in the DiT
checkpoint as plain numbers (:func:`condition_stats`). Encoding (:func:`encode_conditions`) is the
same code for training batches and for sampling requests.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sciDiT.batch import Domain, TokenBatch, TokenSet, collate
from sciDiT.data.cache import TokenSetDataset, cache_path
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.elements import NUM_ELEMENTS, atomic_number, formula, symbol
from sciDiT.tokenizers.symmetry import HALL_META

HARTREE_EV = 27.211386


@dataclass(frozen=True)
class ConditionKey:
    """What one condition key means: its domain, DiT kind, unit and where its values come from."""

    domain: Domain
    kind: str  # vector | class | token_set
    unit: str
    text: str
    column: str = ""  # source CSV column (QM9: qm9pack; crystals: CDVAE CSV); "" = from the token set itself
    scale: float = 1.0  # column value x scale = value in ``unit``


CONDITION_KEYS: dict[str, ConditionKey] = {
    "alpha": ConditionKey(Domain.MOLECULE, "vector", "Bohr^3", "polarizability", "Polarizability_bohr3"),
    "gap": ConditionKey(Domain.MOLECULE, "vector", "eV", "HOMO-LUMO gap", "HOMO_LUMO_gap_au", HARTREE_EV),
    "homo": ConditionKey(Domain.MOLECULE, "vector", "eV", "HOMO energy", "HOMO_au", HARTREE_EV),
    "lumo": ConditionKey(Domain.MOLECULE, "vector", "eV", "LUMO energy", "LUMO_au", HARTREE_EV),
    "mu": ConditionKey(Domain.MOLECULE, "vector", "Debye", "dipole moment", "Dipole_debye"),
    "Cv": ConditionKey(Domain.MOLECULE, "vector", "cal/(mol K)", "heat capacity at 298 K", "Heatcapacity_Cv_cal_mol_K"),
    "spacegroup": ConditionKey(Domain.CRYSTAL, "class", "", "space-group number 1..230", "spacegroup.number"),
    "formation_energy": ConditionKey(Domain.CRYSTAL, "vector", "eV/atom", "formation energy per atom", "formation_energy_per_atom"),
    "band_gap": ConditionKey(Domain.CRYSTAL, "vector", "eV", "band gap", "band_gap"),
    "elements": ConditionKey(Domain.CRYSTAL, "token_set", "", "exact element set, e.g. [Li,Fe,P,O]"),
    "composition": ConditionKey(Domain.CRYSTAL, "token_set", "", "the cell's composition, e.g. Li4Fe4P4O16 (fixes num_atoms)"),
}
NUM_SPACEGROUPS = 230
SIZE_KEY = "num_atoms"  # a request key that sizes the sets (not a DiT condition)
SIZE_BINS = 20  # quantile bins of a scalar condition in its table of set sizes (size_table)


def dit_condition_spec(name: str) -> dict[str, Any]:
    """The ``sciDiT.models.dit.DiT`` condition spec a key needs (add ``dropout`` in config for label dropout)."""
    kind = CONDITION_KEYS[name].kind
    if kind == "vector":
        return {"kind": "vector", "dim": 1}
    if kind == "class":
        return {"kind": "class", "num_classes": NUM_SPACEGROUPS}
    return {"kind": "token_set", "num_tokens": NUM_ELEMENTS + 1}


def check_condition_names(names: Sequence[str], dit_conditions: Mapping[str, Mapping[str, Any]] | None, where: str = "data.conditions") -> None:
    """One-line error unless every data condition is a known key declared in the DiT with the matching spec, and vice versa."""
    dit_conditions = dict(dit_conditions or {})
    for name in names:
        if name not in CONDITION_KEYS:
            raise SciDiTInputError(f"{where}: unknown condition {name!r}; known: {', '.join(CONDITION_KEYS)}")
        spec, need = dict(dit_conditions.get(name) or {}), dit_condition_spec(name)
        spec.pop("dropout", None)
        if spec != need:
            raise SciDiTInputError(f"{where}: condition {name!r} needs model.dit.conditions.{name}={need} (plus an optional dropout), got {spec or 'nothing'}")
    extra = [k for k in dit_conditions if k in CONDITION_KEYS and k not in names]
    if extra:
        raise SciDiTInputError(f"model.dit.conditions declares {extra} but {where} does not provide them")


def check_condition_domains(names: Sequence[str], datasets: Any) -> None:
    """One-line error when a condition's domain has no dataset in ``data.datasets`` (QM9: molecules; the rest: crystals)."""
    if not names or datasets is None:
        return
    items = list(datasets.keys()) if isinstance(datasets, Mapping) else [d if isinstance(d, str) else d.get("name") for d in datasets]
    domains = {Domain.MOLECULE if n == "qm9" else Domain.CRYSTAL for n in items}
    missing = [n for n in names if n in CONDITION_KEYS and CONDITION_KEYS[n].domain not in domains]
    if missing:
        raise SciDiTInputError(f"data.conditions {missing}: data.datasets holds no {CONDITION_KEYS[missing[0]].domain.name.lower()}s to take them from")


# ----------------------------------------------------------------------------------------------
# Values from the data
# ----------------------------------------------------------------------------------------------


def qm9_property_table(folder: Path, cache_dir: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """The six QM9 properties (user units) and ``qm9_index`` of every qm9pack row, cached in ``cache_dir``.

    Reads only the property columns of the CSVs (the parse cache of the structures is not touched).
    """
    from sciDiT.data.qm9 import QM9PACK_FILES

    sources = [folder / f for f in QM9PACK_FILES]
    path = cache_path(cache_dir, "qm9-properties", sources, {"limit": limit})
    if path.exists():
        return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    qm9 = {k: c for k, c in CONDITION_KEYS.items() if c.domain == Domain.MOLECULE}
    parts, remaining = [], limit
    for source in sources:
        if remaining is not None and remaining <= 0:
            break
        try:
            df = pd.read_csv(source, usecols=["Index", *(c.column for c in qm9.values())], nrows=remaining)
        except ValueError as err:
            raise SciDiTInputError(f"not a qm9pack CSV with property columns: {err}", source) from None
        parts.append(df)
        remaining = None if remaining is None else remaining - len(df)
    df = pd.concat(parts, ignore_index=True).sort_values("Index")
    table = {"qm9_index": df["Index"].to_numpy(np.int64), **{k: df[c.column].to_numpy(np.float64) * c.scale for k, c in qm9.items()}}
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({k: torch.from_numpy(v) for k, v in table.items()}, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is as readable as its data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return table


def condition_values(data: TokenSetDataset, names: Sequence[str], source: Path, layout: str, cache_dir: Path,
                     limit: int | None = None) -> dict[str, np.ndarray]:
    """Per item of ``data``, the raw value of each scalar/class condition of its domain (NaN where unknown).

    ``source``: the qm9pack folder (``layout`` ``qm9pack``) or the CDVAE split CSV (``layout`` ``cdvae``).
    ``elements`` and ``composition`` need no column (they are read from the token types at collate time).
    """
    wanted = [n for n in names if CONDITION_KEYS[n].domain == data.domain and CONDITION_KEYS[n].column]
    if not wanted:
        return {}
    if layout == "pyg":
        raise SciDiTInputError(f"QM9 property conditions {wanted} need the qm9pack layout (CSV property columns), not a torch_geometric root", source)
    if layout == "qm9pack":
        table = qm9_property_table(source, cache_dir, limit)
        idx = np.asarray(data.meta_column("qm9_index"), dtype=np.int64)
        pos = np.searchsorted(table["qm9_index"], idx).clip(max=len(table["qm9_index"]) - 1)
        found = table["qm9_index"][pos] == idx
        return {n: np.where(found, table[n][pos], np.nan) for n in wanted}
    try:
        df = pd.read_csv(source, usecols=lambda c: c in {CONDITION_KEYS[n].column for n in wanted}, nrows=limit)
    except (ValueError, OSError, EOFError) as err:
        raise SciDiTInputError(f"cannot read condition columns: {str(err).splitlines()[0]}", source) from None
    rows = np.asarray(data.meta_column("row"), dtype=np.int64)
    out = {}
    for n in wanted:
        column = CONDITION_KEYS[n].column
        if column not in df.columns:
            raise SciDiTInputError(f"condition {n!r} needs the column {column!r}, which this CSV lacks", source)
        out[n] = pd.to_numeric(df[column], errors="coerce").to_numpy(np.float64)[rows] * CONDITION_KEYS[n].scale
    return out


def element_set(types: Tensor) -> list[int]:
    """Sorted distinct atomic numbers of a set's token types."""
    return sorted(int(z) for z in torch.unique(types) if 1 <= int(z) <= NUM_ELEMENTS)


def element_multiset(types: Tensor) -> list[int]:
    """A set's atomic numbers, one per atom, sorted (its composition; the order of the atoms is lost)."""
    return sorted(int(z) for z in types if 1 <= int(z) <= NUM_ELEMENTS)


DERIVED = {"elements": element_set, "composition": element_multiset}  # keys read from a set's own types, not a data column


class ConditionedDataset(Dataset):
    """A :class:`TokenSetDataset` whose items carry their raw condition values in ``meta['condition']``.

    ``derived``: the keys of :data:`DERIVED` to read from each set's own types (those of its domain)."""

    def __init__(self, data: TokenSetDataset, values: Mapping[str, np.ndarray], derived: Sequence[str] = ()):
        self.data, self.values = data, dict(values)
        self.derived = [k for k in derived if CONDITION_KEYS[k].domain == data.domain]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> TokenSet:
        ts = self.data[i]
        condition: dict[str, Any] = {k: float(v[i]) for k, v in self.values.items() if math.isfinite(v[i])}
        for key in self.derived:
            condition[key] = DERIVED[key](ts.types)
        ts.meta = {**ts.meta, "condition": condition}
        return ts


def condition_stats(names: Sequence[str], parts: Sequence[tuple[TokenSetDataset, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """Plain-data statistics of each condition over the training ``parts`` (dataset, its values).

    Scalars: mean, std (the standardisation), min, max (the training range, which bounds requests)
    and count; ``spacegroup``: the groups seen; ``elements`` / ``composition``: the elements seen in training sets;
    each also its table of set sizes given the value (:func:`size_table`).
    """
    stats: dict[str, dict[str, Any]] = {}
    for name in names:
        key = CONDITION_KEYS[name]
        entry: dict[str, Any] = {"kind": key.kind, "domain": key.domain.name.lower(), "unit": key.unit}
        if name in DERIVED:
            seen: set[int] = set()
            for data, _ in parts:
                if data.domain == key.domain:
                    seen |= set(np.unique(data.store["types"].numpy()[_token_rows(data)]).tolist())
            entry["seen"] = sorted(seen)
        else:
            values = np.concatenate([v[name] for _, v in parts if name in v] or [np.zeros(0)])
            values = values[np.isfinite(values)]
            if len(values) == 0:
                raise SciDiTInputError(f"data.conditions: no training set has a value for {name!r} (does data.datasets hold {key.domain.name.lower()}s?)")
            if key.kind == "class":
                entry["seen"] = sorted({int(v) for v in values})
                units = [HALL_META in data.store["meta"] for data, _ in parts if data.domain == key.domain]
                if any(units) and not all(units):
                    raise SciDiTInputError("data.datasets mixes asymmetric-unit and whole-cell crystals: a space group cannot tell them apart")
                if any(units):
                    entry["asymmetric_unit"] = True  # the model generates asymmetric units, expanded in the requested group
            else:
                entry.update(mean=float(values.mean()), std=float(max(values.std(), 1e-6)), min=float(values.min()), max=float(values.max()), count=int(len(values)))
        entry.update(size_table(name, parts))
        stats[name] = entry
    return stats


def size_table(name: str, parts: Sequence[tuple[TokenSetDataset, Mapping[str, np.ndarray]]]) -> dict[str, Any]:
    """Training counts of set sizes given the condition's value, so that requests can be sized from
    ``p(num_atoms | value)`` as EDM's conditional protocol does (a polarizability fixes the size more than anything).

    Scalars: ``size_edges`` (quantile edges of ``SIZE_BINS`` bins) and ``size_counts`` {bin: counts by size};
    ``spacegroup``: {group: counts}; ``elements``: {number of distinct elements: counts}; ``composition``: {number of atoms: counts}.
    """
    key = CONDITION_KEYS[name]
    sizes, labels = [], []
    for data, values in parts:
        if data.domain != key.domain:
            continue
        if key.kind == "token_set":
            sizes.append(data.num_tokens)
            labels.append(data.num_tokens if name == "composition" else data.num_distinct_types())
        elif name in values:
            known = np.isfinite(values[name])
            sizes.append(data.num_tokens[known])
            labels.append(values[name][known])
    size, label = np.concatenate(sizes).astype(np.int64), np.concatenate(labels)
    table: dict[str, Any] = {}
    if key.kind == "vector":
        edges = np.unique(np.quantile(label, np.linspace(0.0, 1.0, SIZE_BINS + 1)[1:-1]))
        table["size_edges"] = edges.tolist()
        label = np.searchsorted(edges, label, side="right")
    bins = label.astype(np.int64)
    table["size_counts"] = {int(b): np.bincount(size[bins == b]).tolist() for b in np.unique(bins)}
    return table


def size_distribution(request: Mapping[str, Any], stats: Mapping[str, Mapping[str, Any]], marginal: np.ndarray) -> np.ndarray | None:
    """``p(num_atoms | request)`` over sizes ``0..len(marginal) - 1``, or None when no requested condition has a size table.

    Each condition's training counts for the request's bin (:func:`size_table`), smoothed by one
    pseudo-set spread as the ``marginal`` (the domain's training histogram), are combined as a product
    of experts ``p(n) prod_k p(n | c_k) / p(n)``.
    """
    prior = np.asarray(marginal, dtype=np.float64)
    prior = prior / prior.sum()
    out, used = prior.copy(), False
    for name, value in request.items():
        st = stats.get(name, {})
        if "size_counts" not in st:
            continue
        if st["kind"] == "vector":
            label = int(np.searchsorted(st["size_edges"], float(value), side="right"))
        elif st["kind"] == "class":
            label = int(value)
        else:
            label = len(value)
        counts = np.zeros_like(prior)
        row = np.asarray(st["size_counts"].get(label, []), dtype=np.float64)[: len(prior)]
        counts[: len(row)] = row
        conditional = (counts + prior) / (counts.sum() + 1.0)  # [sizes]
        out = out * np.divide(conditional, prior, out=np.zeros_like(prior), where=prior > 0)
        used = True
    return out / out.sum() if used else None


def _token_rows(data: TokenSetDataset) -> np.ndarray:
    """Positions in the flat store of every token of ``data``'s items."""
    offsets = data.store["offsets"].numpy()
    return np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in data.indices] or [np.zeros(0, dtype=np.int64)])


# ----------------------------------------------------------------------------------------------
# Encoding: raw values (training sets or a request) -> DiT condition tensors
# ----------------------------------------------------------------------------------------------


def encode_conditions(values: Sequence[Mapping[str, Any]], stats: Mapping[str, Mapping[str, Any]],
                      names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """DiT ``cond`` tensors for ``B`` sets from their raw values (a key absent from a set's dict = null there).

    Per condition ``k`` of ``names`` (default: all of ``stats``): vector ``k [B, 1]`` (standardised),
    class ``k [B]`` (space group - 1), token set ``k [B, M]`` atomic numbers with ``k_mask [B, M]``;
    and ``k_null [B]`` bool, True where the set has no value.
    """
    cond: dict[str, Tensor] = {}
    for name in stats if names is None else names:
        st = stats[name]
        null = torch.tensor([name not in v for v in values], dtype=torch.bool)  # [B]
        if st["kind"] == "vector":
            x = torch.tensor([float(v.get(name, st["mean"])) for v in values], dtype=torch.float32)  # [B]
            cond[name] = ((x - st["mean"]) / st["std"])[:, None]  # [B, 1]
        elif st["kind"] == "class":
            cond[name] = torch.tensor([int(v.get(name, 1)) - 1 for v in values], dtype=torch.long)  # [B]
        else:
            ids = [[z if isinstance(z, int) else atomic_number(z) for z in v.get(name, [])] for v in values]
            ids_t = torch.zeros(len(values), max([len(i) for i in ids] + [1]), dtype=torch.long)  # [B, M]
            for b, row in enumerate(ids):
                ids_t[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            cond[name], cond[f"{name}_mask"] = ids_t, ids_t > 0
        cond[f"{name}_null"] = null
    return cond


class ConditionCollate:
    """``collate_fn`` that pads token sets and adds their condition tensors (:func:`encode_conditions`)."""

    def __init__(self, stats: Mapping[str, Mapping[str, Any]]):
        self.stats = {k: dict(v) for k, v in stats.items()}

    def __call__(self, sets: list[TokenSet]) -> TokenBatch:
        return collate(sets, cond=encode_conditions([s.meta.get("condition", {}) for s in sets], self.stats))


# ----------------------------------------------------------------------------------------------
# Requests (sampling): validation against a checkpoint's statistics
# ----------------------------------------------------------------------------------------------


def describe_keys() -> list[str]:
    """One line per request key with its domain and unit (for ``--help``)."""
    lines = [f"{k:<16} {c.domain.name.lower():<8} {c.text}{', ' + c.unit if c.unit else ''}" for k, c in CONDITION_KEYS.items()]
    return lines + [f"{SIZE_KEY:<16} {'both':<8} atoms per sample (sizes the sets)"]


def finite_number(name: str, value: Any, unit: str = "") -> float:
    """``value`` as a finite float (not a bool); one-line error naming ``name`` (e.g. ``condition.gap``) otherwise."""
    try:
        x = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        x = None
    if x is None or not math.isfinite(x):
        raise SciDiTInputError(f"{name} must be a finite number{f' ({unit})' if unit else ''}, got {value!r}")
    return x


def _element_list(value: Any) -> list[str]:
    """``[Li,Fe,P,O]`` / ``"Li,Fe,P,O"`` / ``"Li-Fe-P-O"`` / a list -> symbols."""
    if isinstance(value, str):
        value = [v for v in value.strip().strip("[]").replace("-", ",").split(",") if v.strip()]
    if not isinstance(value, (list, tuple, set, frozenset)) or not value or not all(isinstance(v, str) for v in value):
        raise SciDiTInputError(f"condition.elements must be a non-empty list of element symbols, e.g. [Li,Fe,P,O], got {value!r}")
    return [v.strip() for v in value]


def composition_numbers(value: Any) -> list[int]:
    """A cell's composition (a formula such as ``Li4Fe4P4O16``, or a list of symbols one per atom) -> sorted atomic numbers, one per atom."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return sorted(atomic_number(v.strip(), "condition.composition") for v in value)
    if not isinstance(value, str) or not value.strip():
        raise SciDiTInputError(f"condition.composition must be a formula with integer counts, e.g. Li4Fe4P4O16, got {value!r}")
    from pymatgen.core import Composition

    try:
        amounts = Composition(value.strip()).get_el_amt_dict()
    except (ValueError, KeyError) as err:
        raise SciDiTInputError(f"condition.composition={value!r} is not a formula: {err}") from None
    if not amounts or any(a != round(a) or a < 1 for a in amounts.values()):
        raise SciDiTInputError(f"condition.composition={value!r} must give each element a positive integer count (the atoms of one cell)")
    return sorted(z for el, a in amounts.items() for z in [atomic_number(el, "condition.composition")] * int(round(a)))


def validate_request(request: Mapping[str, Any] | None, domain: Domain, stats: Mapping[str, Mapping[str, Any]],
                     allow_extrapolation: bool = False) -> dict[str, Any]:
    """The canonical request (numbers as floats, ``spacegroup`` int, ``elements`` symbols by atomic number).

    One-line SciDiTInputError for: an unknown key, a key of the other domain, a key the checkpoint
    was not trained with, a wrong type, a value outside the training range (or a space group or
    element never seen in training) unless ``allow_extrapolation``, an unknown element.
    """
    out: dict[str, Any] = {}
    flag = "; pass allow_extrapolation=true to request it anyway"
    for key, value in dict(request or {}).items():
        if key == SIZE_KEY:
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() or int(value) < 1:
                raise SciDiTInputError(f"condition.{SIZE_KEY} must be a positive integer, got {value!r}")
            out[key] = int(value)
            continue
        if key not in CONDITION_KEYS:
            raise SciDiTInputError(f"condition.{key}: unknown condition; known: {', '.join([*CONDITION_KEYS, SIZE_KEY])}")
        info = CONDITION_KEYS[key]
        if info.domain != domain:
            raise SciDiTInputError(f"condition.{key} applies to domain={info.domain.name.lower()}, not domain={domain.name.lower()}")
        if key not in stats:
            trained = ", ".join(stats) or "none: it samples unconditionally only"
            raise SciDiTInputError(f"condition.{key}: this checkpoint was not trained with it (its conditions: {trained}; a property regressor 'property_guide' can steer it)")
        st = stats[key]
        if info.kind == "vector":
            x = finite_number(f"condition.{key}", value, info.unit)
            if not allow_extrapolation and not st["min"] <= x <= st["max"]:
                raise SciDiTInputError(f"condition.{key}={x:g} {info.unit} is outside the training range "
                                       f"[{st['min']:g}, {st['max']:g}] {info.unit}{flag}")
            out[key] = x
        elif info.kind == "class":
            x = finite_number(f"condition.{key}", value, info.unit)
            if x != int(x) or not 1 <= x <= NUM_SPACEGROUPS:
                raise SciDiTInputError(f"condition.{key} must be an integer space-group number in 1..{NUM_SPACEGROUPS}, got {value!r}")
            if not allow_extrapolation and int(x) not in st["seen"]:
                raise SciDiTInputError(f"condition.{key}={int(x)}: no training crystal has this space group{flag}")
            out[key] = int(x)
        else:
            zs = (composition_numbers(value) if key == "composition"
                  else sorted({atomic_number(s, f"condition.{key}") for s in _element_list(value)}))
            unseen = [symbol(z) for z in zs if z not in st["seen"]]
            if unseen and not allow_extrapolation:
                raise SciDiTInputError(f"condition.{key}: no training crystal contains {', '.join(unseen)}{flag}")
            out[key] = [symbol(z) for z in zs] if key == "elements" else formula(zs)
    return out


def request_json(request: Mapping[str, Any]) -> str:
    """The request as written into outputs (SD property / manifest column ``request``): JSON, keys sorted."""
    return json.dumps(dict(request), sort_keys=True)
