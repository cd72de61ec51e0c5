"""Real-data loaders: QM9 molecules and CDVAE-format crystals as cached token-set datasets.

Loaders read standard public files (qm9pack CSVs or a torch_geometric QM9 root; CDVAE CSVs with a
``cif`` column), tokenize them once and cache flat tensors; :class:`BucketBatchSampler` batches sets of
similar size together. See ``data/README.md`` for where to get each dataset.
"""

from sciDiT.data.cache import TokenSetDataset, load_or_build
from sciDiT.data.cdvae import CDVAE_FOLDERS, load_cdvae
from sciDiT.data.paths import resolve_cache_dir, resolve_data_dir
from sciDiT.data.qm9 import QM9_SIZE, load_qm9, load_qm9_split, qm9_split
from sciDiT.data.sampler import BucketBatchSampler

__all__ = [
    "BucketBatchSampler",
    "CDVAE_FOLDERS",
    "QM9_SIZE",
    "TokenSetDataset",
    "load_cdvae",
    "load_or_build",
    "load_qm9",
    "load_qm9_split",
    "qm9_split",
    "resolve_cache_dir",
    "resolve_data_dir",
]
