"""QM9: 130,831 small organic molecules (C, H, N, O, F; up to 29 atoms with hydrogens) with DFT geometries.

Two on-disk layouts are read, both without any download:

* the CSVs of the PyPI package ``qm9pack`` (``qm9_part{1,2,3}.csv``; columns ``Index``, ``SMILES``,
  ``Elements`` like ``['C','H']`` and ``XYZ_Ang`` like ``[[x,y,z],...]`` in Angstrom), found in
  ``<data_dir>/qm9`` or in the installed ``qm9pack`` wheel;
* a ``torch_geometric.datasets.QM9`` root at ``<data_dir>/qm9`` (``raw/`` or ``processed/`` files).

Both hold the same 130,831 molecules (the 3,054 "uncharacterized" ones removed) in QM9 index order.
QM9 has no official split; like ADiT we use a fixed seeded one (:func:`qm9_split`):
``torch.randperm(130831, generator=torch.Generator().manual_seed(42))``, first 100,000 = train,
next 18,000 = val, the remaining 12,831 = test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sciDiT.batch import TokenSet
from sciDiT.data.cache import TokenSetDataset, load_or_build
from sciDiT.data.paths import not_found, qm9pack_dir, resolve_cache_dir, resolve_data_dir
from sciDiT.errors import DataNotFoundError, SciDiTInputError
from sciDiT.tokenizers.elements import atomic_number
from sciDiT.tokenizers.molecule import MoleculeTokenizer

QM9_SIZE = 130_831
SPLIT_SIZES = {"train": 100_000, "val": 18_000}  # test = the rest
SPLIT_SEED = 42
QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
PYG_RAW_FILES = ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")
PYG_PROCESSED_FILE = "data_v3.pt"
_BARE_DOT = re.compile(r"\.(?=[,\]Ee])")  # "0.," is not JSON: qm9pack writes some zeros as "0."


def qm9_split(n: int = QM9_SIZE, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Row positions of the fixed seeded split: 100,000 train / 18,000 val / rest test (for n = 130,831).

    For other ``n`` the same fractions are used. Each split lists rows in permutation order, so its
    first ``k`` rows are a random subset of it.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = round(n * SPLIT_SIZES["train"] / QM9_SIZE)
    n_val = round(n * SPLIT_SIZES["val"] / QM9_SIZE)
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def edm_property_halves(n: int = QM9_SIZE, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """EDM's conditional protocol: the train split of :func:`qm9_split` cut into two disjoint halves.

    Half ``A`` trains the property predictor, half ``B`` the conditional generator, so the
    predictor that scores generated molecules never saw the generator's data. The train rows are
    permuted by ``np.random.default_rng(seed + 1)`` and cut at ``len // 2`` (A gets the first part).
    """
    train = qm9_split(n, seed)["train"]
    perm = np.random.default_rng(seed + 1).permutation(train)
    return {"A": perm[: len(perm) // 2], "B": perm[len(perm) // 2 :]}


def find_qm9(data_dir: str | Path | None = None) -> tuple[str, Path]:
    """Locate QM9: ``("qm9pack", folder)`` or ``("pyg", root)``; raises DataNotFoundError if absent."""
    root = resolve_data_dir(data_dir) / "qm9"
    if all((root / f).is_file() for f in QM9PACK_FILES):
        return "qm9pack", root
    if all((root / "raw" / f).is_file() for f in PYG_RAW_FILES) or (root / "processed" / PYG_PROCESSED_FILE).is_file():
        return "pyg", root
    wheel = qm9pack_dir()
    if wheel is not None and all((wheel / f).is_file() for f in QM9PACK_FILES):
        return "qm9pack", wheel
    raise not_found("qm9", root, "QM9 (qm9pack CSVs or a torch_geometric QM9 root)")


def _read_qm9pack(folder: Path, limit: int | None) -> TokenSetDataset:
    """Parse the qm9pack CSVs (all columns as JSON text in one pass each: ~5 s for all molecules)."""
    tokenizer = MoleculeTokenizer()
    sets = []
    remaining = limit
    for name in QM9PACK_FILES:
        if remaining is not None and remaining <= 0:
            break
        path = folder / name
        try:
            df = pd.read_csv(path, usecols=["Index", "SMILES", "Elements", "XYZ_Ang"], nrows=remaining)
        except ValueError as err:  # pandas: missing columns
            raise SciDiTInputError(f"not a qm9pack CSV: {err}", path) from err
        if remaining is not None:
            remaining -= len(df)
        try:
            elements = json.loads("[" + ",".join(df["Elements"]).replace("'", '"') + "]")
            coords = json.loads(_BARE_DOT.sub(".0", "[" + ",".join(df["XYZ_Ang"]) + "]"))
        except (json.JSONDecodeError, TypeError) as err:
            raise SciDiTInputError(f"cannot parse the Elements/XYZ_Ang columns: {err}", path) from err
        z_of = {}
        for row, (idx, smiles, els, xyz) in enumerate(zip(df["Index"], df["SMILES"], elements, coords)):
            where = f"{path} row {row} (QM9 index {idx})"
            numbers = [z_of.get(e) or z_of.setdefault(e, atomic_number(e, where)) for e in els]
            try:
                sets.append(_with_graph(tokenizer, np.array(numbers), np.array(xyz), {"qm9_index": int(idx), "smiles": str(smiles)}))
            except SciDiTInputError as err:
                raise SciDiTInputError(str(err), where) from err
    return TokenSetDataset.from_sets(sets)


def _with_graph(tokenizer: MoleculeTokenizer, numbers: np.ndarray, positions: np.ndarray, meta: dict) -> TokenSet:
    """Token set of one molecule with its bond graph from the SMILES (``meta['graph_source']`` says how it was found)."""
    tokenizer.from_arrays(numbers, positions)  # validate before RDKit sees the atoms
    bonds = charges = None
    source = "none"
    if meta.get("smiles"):
        bonds, charges, source = tokenizer.graph_from_smiles(numbers, positions, meta["smiles"])
    return tokenizer.from_arrays(numbers, positions, meta={**meta, "graph_source": source}, bonds=bonds, charges=charges)


def _read_pyg(root: Path, limit: int | None) -> TokenSetDataset:
    """Read a torch_geometric QM9 root; it may process raw/ into processed/ but never downloads."""
    from torch_geometric.datasets import QM9

    class _LocalQM9(QM9):
        def _download(self) -> None:  # processed files alone are enough
            if (Path(self.processed_dir) / PYG_PROCESSED_FILE).is_file():
                return
            super()._download()

        def download(self) -> None:
            raise not_found("qm9", self.raw_dir, "torch_geometric QM9 raw files " + ", ".join(PYG_RAW_FILES))

    try:
        pyg = _LocalQM9(str(root))
    except DataNotFoundError:
        raise
    except Exception as err:  # PyG's processing of malformed raw files raises anything
        raise SciDiTInputError(f"torch_geometric could not read this QM9 root: {type(err).__name__}: {err}", root) from err
    tokenizer = MoleculeTokenizer()
    n = len(pyg) if limit is None else min(limit, len(pyg))
    sets = []
    for i in range(n):
        data = pyg[i]
        meta = {"qm9_index": int(str(data.name).removeprefix("gdb_"))}
        if getattr(data, "smiles", None) is not None:
            meta["smiles"] = str(data.smiles)
        sets.append(_with_graph(tokenizer, data.z.numpy(), data.pos.double().numpy(), meta))
    return TokenSetDataset.from_sets(sets)


def load_qm9(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> TokenSetDataset:
    """All QM9 molecules (hydrogens kept) as token sets, cached; ``limit`` keeps the first rows only.

    Meta of each set: ``qm9_index`` (the QM9 ``gdb`` number), ``smiles``, ``origin`` (centroid removed
    by the tokenizer), ``graph_source`` (``smiles`` | ``perceived`` | ``none``: how the bond graph
    was obtained, see :meth:`MoleculeTokenizer.graph_from_smiles`; ``none`` sets carry no graph).
    """
    layout, folder = find_qm9(data_dir)
    if layout == "qm9pack":
        sources = [folder / f for f in QM9PACK_FILES]
        build = lambda: _read_qm9pack(folder, limit)  # noqa: E731
    else:
        processed = folder / "processed" / PYG_PROCESSED_FILE
        sources = [processed] if processed.is_file() else [folder / "raw" / f for f in PYG_RAW_FILES]
        build = lambda: _read_pyg(folder, limit)  # noqa: E731
    return load_or_build(resolve_cache_dir(cache_dir), "qm9", sources, {"layout": layout, "limit": limit}, build)


def load_qm9_split(
    split: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> TokenSetDataset:
    """One split of the fixed seeded QM9 split (see module docstring), in permutation order.

    With ``limit`` only the first ``limit`` rows are read, and each keeps the split it has in the full set.
    """
    if split not in ("train", "val", "test"):
        raise SciDiTInputError(f"unknown QM9 split {split!r} (expected train, val or test)")
    full = load_qm9(data_dir, cache_dir, limit)
    n_total = QM9_SIZE if limit is not None else len(full)
    rows = qm9_split(n_total)[split]
    rows = rows[rows < len(full)]
    if len(rows) == 0:
        raise DataNotFoundError(f"QM9 split {split!r} is empty with limit={limit}")
    return full.subset(rows)


QM9_PROPERTIES = ("alpha", "gap", "homo", "lumo", "mu", "Cv")  # EDM's conditional benchmark (units: sciDiT.data.conditions)


def load_qm9_properties(keys: tuple[str, ...] = QM9_PROPERTIES, data_dir: str | Path | None = None,
                        cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The EDM condition properties of every QM9 molecule in user units, indexed by QM9 index (``qm9_index``).

    The table the conditional training reads (:func:`sciDiT.data.conditions.qm9_property_table`:
    only the property columns of the qm9pack CSVs, cached; the structure parse cache is not touched).
    """
    from sciDiT.data.conditions import qm9_property_table

    unknown = [k for k in keys if k not in QM9_PROPERTIES]
    if unknown:
        raise SciDiTInputError(f"unknown QM9 property {unknown[0]!r} (expected one of {', '.join(QM9_PROPERTIES)})")
    layout, folder = find_qm9(data_dir)
    if layout != "qm9pack":
        raise DataNotFoundError("QM9 properties are read from the qm9pack CSVs (`pip install qm9pack`)", folder)
    table = qm9_property_table(folder, resolve_cache_dir(cache_dir))
    return pd.DataFrame({k: table[k] for k in keys}, index=pd.Index(table["qm9_index"], name="Index"))
