"""Where datasets are read from and where processed caches are written.

The data folder is treated as read-only (it may be a shared copy), so caches always live in a
separate cache folder. Both resolve as: explicit argument > environment variable > default.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sciDiT.errors import DataNotFoundError

DATA_DIR_ENV = "SCIDIT_DATA_DIR"
CACHE_DIR_ENV = "SCIDIT_CACHE_DIR"

# Where a user gets each dataset; quoted in every "not found" error.
SOURCES = {
    "qm9": "`pip install qm9pack` (CSV files qm9pack/data/qm9_part{1,2,3}.csv), or a torch_geometric QM9 root "
    "(raw/gdb9.sdf, raw/gdb9.sdf.csv, raw/uncharacterized.txt or processed/data_v3.pt) at <data_dir>/qm9",
    "mp20": "CDVAE's data/mp_20/{train,val,test}.csv from https://github.com/txie-93/cdvae, placed in <data_dir>/mp20",
    "carbon_24": "CDVAE's data/carbon_24/{train,val,test}.csv from https://github.com/txie-93/cdvae, "
    "placed in <data_dir>/cdvae_extra/carbon_24",
    "perov_5": "CDVAE's data/perov_5/{train,val,test}.csv from https://github.com/txie-93/cdvae, "
    "placed in <data_dir>/cdvae_extra/perov_5",
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Data folder: ``data_dir`` if given, else ``$SCIDIT_DATA_DIR``, else ``./data``."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().resolve()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder: ``cache_dir`` if given, else ``$SCIDIT_CACHE_DIR``, else ``./data/cache``."""
    chosen = cache_dir if cache_dir not in (None, "") else os.environ.get(CACHE_DIR_ENV) or os.path.join("data", "cache")
    return Path(chosen).expanduser().resolve()


def qm9pack_dir() -> Path | None:
    """Folder of the CSVs shipped by the ``qm9pack`` wheel, or None when it is not installed.

    ``import qm9pack`` itself fails on recent setuptools (it imports ``pkg_resources``), so the
    package is located without importing it.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def not_found(dataset: str, looked_in: object, what: str) -> DataNotFoundError:
    """The one-line error for a missing dataset: what is missing, where we looked, where to get it."""
    return DataNotFoundError(f"{what} not found; get {dataset} from {SOURCES[dataset]}", looked_in)
