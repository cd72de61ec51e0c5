"""Size-bucketed batching: put sets with similar token counts together so batches carry little padding.

Each epoch the items are shuffled (seed + epoch), cut into *buckets* of ``bucket_batches`` batches'
worth of items, each bucket is sorted by token count and cut into batches, and the batch order is
shuffled. Batches stay random (any item can meet any item of similar size) but a batch of 256
mixed molecules and crystals pads to its largest member, which is now close to its smallest.

Batches have a fixed number of sets (``batch_size``) or a budget of padded token slots
(``max_tokens``: a batch holds as many sets as fit in ``len(batch) * max(num_tokens) <= max_tokens``).
Under DDP every rank builds the same batch list, pads it by repetition to a multiple of the world
size and takes every ``world_size``-th batch, so all ranks run the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): the given values, else torch.distributed's when initialized, else (0, 1)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class EpochShuffle(Sampler[int]):
    """Item order of one epoch: a permutation seeded by ``seed + epoch`` (identity when not shuffling).

    Exposed as ``BucketBatchSampler.sampler`` so Lightning's per-epoch ``set_epoch`` call reaches it.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + salt)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator()) if self.shuffle else torch.arange(self.n)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices grouped by token count (see module docstring).

    Args:
        num_tokens: tokens of each item, [len(dataset)].
        batch_size: sets per batch (ignored when ``max_tokens`` is set).
        max_tokens: padded token slots per batch (``len(batch) * largest set``), instead of a fixed size.
        shuffle: shuffle items and batch order each epoch (False for val/test: deterministic).
        seed: base seed; the epoch is added (``set_epoch``).
        bucket_batches: batches per sorted bucket; larger = less padding, less randomness.
        drop_last: drop a final batch smaller than ``batch_size`` (fixed-size mode only).
        rank, world_size: DDP position; default from torch.distributed if initialized, else 0 / 1.
    """

    def __init__(
        self,
        num_tokens: Sequence[int] | np.ndarray,
        batch_size: int | None = 64,
        max_tokens: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = 32,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.num_tokens = np.asarray(num_tokens, dtype=np.int64)
        if self.num_tokens.ndim != 1 or len(self.num_tokens) == 0:
            raise ValueError("num_tokens must be a non-empty 1-D array")
        if max_tokens is None and (batch_size is None or batch_size < 1):
            raise ValueError("give batch_size >= 1 or max_tokens")
        if max_tokens is not None and max_tokens < int(self.num_tokens.max()):
            raise ValueError(f"max_tokens={max_tokens} is smaller than the largest set ({int(self.num_tokens.max())} tokens)")
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.bucket_batches, self.drop_last, self.shuffle = bucket_batches, drop_last, shuffle
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.sampler = EpochShuffle(len(self.num_tokens), shuffle=shuffle, seed=seed)
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _bucket_size(self) -> int:
        per_batch = self.batch_size if self.max_tokens is None else max(1, self.max_tokens // int(np.median(self.num_tokens)))
        return max(1, per_batch * self.bucket_batches)

    def _cut(self, bucket: np.ndarray) -> list[list[int]]:
        """Cut one bucket, sorted by token count, into batches."""
        if self.max_tokens is None:
            return [bucket[i : i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size)]
        batches, start = [], 0
        for end in range(1, len(bucket) + 1):  # sorted ascending: the newest item is the largest
            if (end - start) * self.num_tokens[bucket[end - 1]] > self.max_tokens:
                batches.append(bucket[start : end - 1].tolist())
                start = end - 1
        batches.append(bucket[start:].tolist())
        return batches

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before splitting over ranks (the same on every rank)."""
        epoch = self.sampler.epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        size = self._bucket_size()
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            bucket = order[start : start + size]
            bucket = bucket[np.argsort(self.num_tokens[bucket], kind="stable")]
            batches.extend(self._cut(bucket))
        if self.drop_last and self.max_tokens is None:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.sampler.generator(salt=1)).tolist()]
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        if self.world_size > 1:
            padded = -(-len(batches) // self.world_size) * self.world_size
            batches = (batches * (padded // max(1, len(batches)) + 1))[:padded]
            batches = batches[self.rank :: self.world_size]
        return iter(batches)

    def __len__(self) -> int:
        return -(-len(self.global_batches()) // self.world_size)
