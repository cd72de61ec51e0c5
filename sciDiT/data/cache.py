"""Processed token sets stored as flat tensors, cached on disk, invalidated when the source changes.

A dataset of ``M`` token sets with ``T`` tokens in all is stored like PyG's ``processed/`` files:
per-token tensors concatenated over sets (``types`` [T], ``pos`` [T, 3], optional ``frac`` [T, 3]
and ``values`` [T]), ``offsets`` [M + 1] marking where each set starts, per-set ``lattice`` [M, 6]
and per-set metadata as columns (``meta[key]`` is a list of length M). Molecule graphs, when some
set has one, are ``bonds`` [E, 3] (set-local i, j, order) with ``bond_offsets`` [M + 1], ``charges``
[T] and ``has_graph`` [M] bool. Parsing happens once; later loads are a single ``torch.load``.

The cache file name carries a hash of the source files (absolute path, size, modification time),
the processing options and :data:`CACHE_VERSION`, so editing a source file, changing an option
or changing the processing code (bump the version) makes a fresh cache. Files are written to a
temporary name and moved into place with ``os.replace``, so a cache is never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sciDiT.batch import Domain, TokenSet

CACHE_VERSION = 2  # 2: molecule bond graphs and formal charges; bump when parsing/tokenization changes what a cache holds


class TokenSetDataset(Dataset):
    """Token sets of one domain held as flat tensors; item ``i`` is a :class:`TokenSet`.

    ``indices`` selects a subset (a split, a random subsample) without copying the tensors.
    """

    def __init__(self, store: dict[str, Any], indices: np.ndarray | None = None):
        self.store = store
        self.domain = Domain(int(store["domain"]))
        offsets = store["offsets"]
        all_counts = (offsets[1:] - offsets[:-1]).numpy()
        self.indices = np.arange(len(all_counts), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.num_tokens = all_counts[self.indices]  # [len(self)] tokens per item, read by the bucket sampler

    @classmethod
    def from_sets(cls, sets: Sequence[TokenSet]) -> "TokenSetDataset":
        """Pack token sets of one domain into flat tensors."""
        if not sets:
            raise ValueError("from_sets() needs at least one token set")
        domains = {int(s.domain) for s in sets}
        if len(domains) != 1:
            raise ValueError(f"a TokenSetDataset holds one domain, got {sorted(domains)}")
        counts = torch.tensor([s.num_tokens for s in sets], dtype=torch.long)
        store: dict[str, Any] = {
            "domain": domains.pop(),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
            "types": torch.cat([s.types for s in sets]).to(torch.int16),
            "pos": torch.cat([s.pos for s in sets]).float(),
            "lattice": torch.stack([s.lattice for s in sets]).float(),
        }
        for name in ("frac", "values"):  # stored only when some set uses them
            flat = torch.cat([getattr(s, name) for s in sets]).float()
            if flat.abs().sum() > 0:
                store[name] = flat
        if any(s.bonds is not None for s in sets):
            no_bonds = torch.zeros(0, 3, dtype=torch.long)
            bond_counts = torch.tensor([0 if s.bonds is None else len(s.bonds) for s in sets], dtype=torch.long)
            store["bonds"] = torch.cat([no_bonds if s.bonds is None else s.bonds.long() for s in sets]).to(torch.int16)
            store["bond_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), bond_counts.cumsum(0)])
            store["charges"] = torch.cat([torch.zeros(s.num_tokens, dtype=torch.long) if s.charges is None else s.charges.long()
                                          for s in sets]).to(torch.int8)
            store["has_graph"] = torch.tensor([s.bonds is not None for s in sets])
        keys = sorted({k for s in sets for k in s.meta})
        store["meta"] = {k: [s.meta.get(k) for s in sets] for k in keys}
        return cls(store)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> TokenSet:
        j = int(self.indices[i])
        start, end = int(self.store["offsets"][j]), int(self.store["offsets"][j + 1])
        n = end - start
        bonds = charges = None
        if "bonds" in self.store and bool(self.store["has_graph"][j]):
            bonds = self.store["bonds"][int(self.store["bond_offsets"][j]) : int(self.store["bond_offsets"][j + 1])].long()
            charges = self.store["charges"][start:end].long()
        return TokenSet(
            types=self.store["types"][start:end].long(),
            pos=self.store["pos"][start:end],
            frac=self.store["frac"][start:end] if "frac" in self.store else torch.zeros(n, 3),
            values=self.store["values"][start:end] if "values" in self.store else torch.zeros(n),
            lattice=self.store["lattice"][j],
            domain=self.domain,
            meta={k: v[j] for k, v in self.store["meta"].items() if v[j] is not None},
            bonds=bonds,
            charges=charges,
        )

    def num_distinct_types(self) -> np.ndarray:
        """``[len(self)]`` distinct token types per item (a molecule's or crystal's distinct elements)."""
        offsets, types = self.store["offsets"].numpy(), self.store["types"].numpy()
        return np.array([len(np.unique(types[offsets[j] : offsets[j + 1]])) for j in self.indices], dtype=np.int64)

    def meta_column(self, key: str) -> list[Any]:
        """One metadata field for every item of this (sub)set, in item order."""
        column = self.store["meta"][key]
        return [column[j] for j in self.indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "TokenSetDataset":
        """Items ``indices`` of this dataset (positions in this dataset, not in the store)."""
        return TokenSetDataset(self.store, self.indices[np.asarray(indices, dtype=np.int64)])


def source_fingerprint(paths: Sequence[str | os.PathLike]) -> list[list[Any]]:
    """(absolute path, size, mtime in ns) of each source file: changes when a file is edited or replaced."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_path(cache_dir: Path, name: str, sources: Sequence[str | os.PathLike], options: dict[str, Any]) -> Path:
    """File for dataset ``name`` built from ``sources`` with ``options`` (see module docstring)."""
    opts = hashlib.sha256(json.dumps({"options": options, "version": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:10]
    src = hashlib.sha256(json.dumps(source_fingerprint(sources)).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{name}-{opts}-{src}.pt"


def load_or_build(
    cache_dir: Path,
    name: str,
    sources: Sequence[str | os.PathLike],
    options: dict[str, Any],
    build: Callable[[], TokenSetDataset],
) -> TokenSetDataset:
    """The cached dataset if a cache for these sources and options exists, else ``build()`` and cache it.

    Caches of the same dataset and options built from an older version of the sources are removed.
    """
    path = cache_path(cache_dir, name, sources, options)
    if path.exists():
        return TokenSetDataset(torch.load(path, weights_only=True))
    dataset = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dataset.store, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is as readable as its data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stale_prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(stale_prefix + "*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return dataset
