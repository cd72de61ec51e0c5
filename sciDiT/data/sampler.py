"""Size-bucketed batching: put sets with similar token counts together so batches carry little padding.

Each epoch the items are shuffled (seed + epoch), cut into *buckets* of ``bucket_batches`` batches'
worth of items, each bucket is sorted by token count and cut into batches, and the batch order is
shuffled. Batches stay random (any item can meet any item of similar size) but a batch of 256
mixed molecules and crystals pads to its largest member, which is now close to its smallest.

Batches have a fixed number of sets (``batch_size``) or a budget of padded token slots
(``max_tokens``: a batch holds as many sets as fit in ``len(batch) * max(num_tokens) <= max_tokens``).
Under DDP every rank builds the same batch list, pads it by repetition to a multiple of the world
size and takes every ``world_size``-th batch, so all ranks run the same number of steps.

Resuming: :class:`ResumableDataLoader` counts the batches it has handed out in the current epoch;
its ``state_dict`` (epoch, position) goes into Lightning checkpoints (Lightning saves the state of
any loader with ``state_dict``/``load_state_dict``), and after ``load_state_dict`` the sampler's
next pass over that epoch starts at that position, so a resumed run sees the same remaining batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


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
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) set by load_state_dict (see there)
        self.start = 0  # batches skipped at the start of the current pass (0 unless resumed)

    def state_dict(self, position: int) -> dict[str, int]:
        """Where training stands: the epoch and ``position`` batches (of this rank) already consumed in it."""
        return {"epoch": self.sampler.epoch, "position": int(position)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``: passes over ``state['epoch']`` skip its first ``position`` batches.

        The skip holds until one such pass has run to its end or ``set_epoch`` moves to another epoch
        (a DataLoader may start and drop an iterator before the one it uses).
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        if position < 0:
            raise ValueError(f"sampler position must be >= 0, got {position}")
        self._resume = None
        self.set_epoch(epoch)
        self._resume = (epoch, position)

    def set_epoch(self, epoch: int) -> None:
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None
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
        resuming = self._resume is not None and self._resume[0] == self.sampler.epoch
        self.start = min(self._resume[1], len(batches)) if resuming else 0
        return self._pass(batches[self.start :])

    def _pass(self, batches: list[list[int]]) -> Iterator[list[int]]:
        yield from batches
        self._resume = None  # a whole (resumed) pass is done: later passes start at the beginning

    def __len__(self) -> int:
        return -(-len(self.global_batches()) // self.world_size)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`BucketBatchSampler` whose state is the epoch and the batches handed out in it.

    Counting happens where batches leave the loader (not in the sampler), so prefetching workers
    do not move the saved position ahead of what training actually consumed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, BucketBatchSampler):
            raise TypeError("ResumableDataLoader needs batch_sampler=BucketBatchSampler(...)")
        self._consumed = 0

    def __iter__(self) -> Iterator:
        iterator = super().__iter__()  # runs iter(batch_sampler): the pass starts (and skips) here
        self._consumed = self.batch_sampler.start
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict(self._consumed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)
