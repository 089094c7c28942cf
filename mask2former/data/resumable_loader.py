"""
A training data loader that can resume where it stopped (``build_resumable_train_loader``).

detectron2's ``TrainingSampler`` is an infinite stream that starts over when a run is resumed, its workers
draw augmentations from RNG streams that depend on the worker layout and on history, and a skipped bad item
is replaced by an index drawn from a per-worker RNG. Resumed runs therefore saw other data than the run
they continue. Here batch ``n`` of a rank is a pure function of (seed, rank, world size, batch size, n):

* :class:`ResumableBatchSampler` cuts each rank's share of a seeded stream of epoch permutations into
  batches, grouping images by aspect ratio (landscape / portrait, from the dataset dicts' "width" and
  "height", as detectron2's ``AspectRatioGroupedDataset`` does after mapping). It can start at any batch:
  it replays the cheap index arithmetic, not the mapping.
* :class:`SeededMapDataset` maps each item with Python, NumPy and torch RNGs seeded from (seed, stream
  position), and puts the caller's RNG states back afterwards, so augmentations do not depend on the number
  of workers, on which worker maps an item, or on what was mapped before. A bad item (the mapper returns
  None under ``DATALOADER.SKIP_BAD_ITEMS``) is replaced by an item of the same aspect group chosen from the
  same seed, and recorded in the batch under :data:`SKIPPED_KEY` so the trainer can count it in the main
  process whatever the worker start method.
"""
import hashlib
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList

from .dataset_mappers.checks import BadDatasetItemError, last_skip_reason

__all__ = [
    "ResumableBatchSampler",
    "SeededMapDataset",
    "ResumableTrainLoader",
    "SKIPPED_KEY",
    "MAX_CONSECUTIVE_BAD_ITEMS",
    "pop_skipped_items",
]

logger = logging.getLogger(__name__)

# Key of the per-item list of skipped items (file, reason, dataset index, iteration) that replaced it.
SKIPPED_KEY = "_skipped_items"
# Replacing a bad item gives up after this many bad items in a row: the data is gone, not one file.
MAX_CONSECUTIVE_BAD_ITEMS = 10

Key = Tuple[int, int, int]  # (iteration, stream position, dataset index)


def _derived_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) % (2**63) for v in values]).generate_state(1)[0])


class ResumableBatchSampler(torchdata.Sampler):
    """
    Yields lists of ``(iteration, position, index)`` keys: this rank's batches from ``start`` on.

    The index stream is that of detectron2's ``TrainingSampler`` in spirit (a fresh permutation of the
    dataset per epoch when ``shuffle``, shared by all ranks; rank ``r`` takes positions ``r, r + world, ...``),
    drawn from NumPy's generator seeded with ``seed``.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        groups: Optional[Sequence[int]] = None,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        """
        Args:
            size: dataset length (> 0).
            batch_size: images per batch of this rank.
            groups: per-index aspect group (0 landscape, 1 portrait); None: no grouping.
            start: the first batch (iteration) to yield.
        """
        if size <= 0:
            raise ValueError(f"ResumableBatchSampler: the dataset is empty (size {size})")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, int(seed), shuffle
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.rank, self.world_size, self.start = rank, world_size, int(start)

    def _positions(self) -> Iterator[Tuple[int, int]]:
        """(position, index) of this rank, forever."""
        rng = np.random.default_rng(self.seed)
        position = 0
        while True:
            order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            first = (self.rank - position) % self.world_size
            for i in range(first, self.size, self.world_size):
                yield position + i, int(order[i])
            position += self.size

    def _batches(self) -> Iterator[List[Tuple[int, int]]]:
        if self.groups is None:
            batch = []
            for item in self._positions():
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
        buckets = ([], [])
        for item in self._positions():
            bucket = buckets[self.groups[item[1]]]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]

    def __iter__(self) -> Iterator[List[Key]]:
        for n, batch in enumerate(self._batches()):
            if n >= self.start:
                yield [(n, p, i) for p, i in batch]

    def __len__(self):  # an infinite stream; DataLoader asks only when iterating with len()
        raise TypeError("ResumableBatchSampler is infinite")


class SeededMapDataset(torchdata.Dataset):
    """Maps ``dataset[index]`` for a ``(iteration, position, index)`` key with RNGs seeded by (seed, position)."""

    def __init__(self, dataset, mapper: Callable, seed: int, groups: Optional[Sequence[int]] = None):
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)
        groups = np.zeros(len(dataset), dtype=np.int64) if groups is None else np.asarray(groups)
        self.groups = groups
        self.members = [np.flatnonzero(groups == g) for g in (0, 1)]

    def __len__(self):
        return len(self.dataset)

    def _map_seeded(self, item, item_seed: int):
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(item_seed)
        np.random.seed(item_seed % (2**32))
        torch.random.default_generator.manual_seed(item_seed)  # the CPU generator only, never the GPUs'
        try:
            return self.mapper(item)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)

    def __getitem__(self, key: Key):
        iteration, position, index = key
        skipped = []
        for attempt in range(MAX_CONSECUTIVE_BAD_ITEMS + 1):
            item = self.dataset[index]
            try:
                data = self._map_seeded(item, _derived_seed(self.seed, position, attempt))
            except BadDatasetItemError as e:
                raise BadDatasetItemError(
                    f"{e.problem} (dataset index {index}, training iteration {iteration}; set "
                    "DATALOADER.SKIP_BAD_ITEMS True to skip such items)",
                    e.file_name if e.file_name is not None else item.get("file_name"),
                ) from None
            if data is not None:
                if skipped:
                    data[SKIPPED_KEY] = skipped
                return data
            skipped.append({"file_name": item.get("file_name"), "reason": last_skip_reason(),
                            "index": index, "iteration": iteration})
            members = self.members[self.groups[index]]
            index = int(members[random.Random(_derived_seed(self.seed, position, attempt, 1)).randrange(len(members))])
        raise BadDatasetItemError(
            f"{len(skipped)} dataset items in a row could not be used at training iteration {iteration}; the "
            "dataset (or its folder) seems gone or broken rather than one item. Last ones: "
            + "; ".join(f"'{s['file_name']}': {s['reason']}" for s in skipped[-3:]),
        )


def pop_skipped_items(batch: List[dict]) -> List[dict]:
    """Remove and return the skipped-item records of a batch (the model never sees them)."""
    records = []
    for data in batch:
        records += data.pop(SKIPPED_KEY, [])
    return records


class ResumableTrainLoader:
    """
    Iterable of training batches (lists of mapped dicts) starting at batch ``start``. The torch DataLoader
    (and its workers) is created on the first ``next()``, so setting :attr:`start` after construction (on
    ``--resume``) costs nothing.
    """

    def __init__(self, dataset_dicts: list, mapper: Callable, batch_size: int, *, seed: int, num_workers: int,
                 aspect_ratio_grouping: bool, rank: int = 0, world_size: int = 1):
        self.dataset = DatasetFromList(dataset_dicts, copy=False)
        self.groups = None
        if aspect_ratio_grouping:
            if all("width" in d and "height" in d for d in dataset_dicts):
                self.groups = np.array([int(d["width"] <= d["height"]) for d in dataset_dicts], dtype=np.int64)
            else:
                logger.info("Aspect-ratio grouping is off: not every dataset dict states 'width' and 'height'.")
        # the dataset's identity (its files, in order): resuming on a changed dataset is worth a warning
        self.fingerprint = hashlib.sha1(
            "\n".join(str(d.get("file_name")) for d in dataset_dicts).encode()
        ).hexdigest()[:16]
        self.mapper, self.batch_size, self.num_workers = mapper, batch_size, num_workers
        self.rank, self.world_size, self.seed, self.start = rank, world_size, int(seed), 0

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                "num_items": len(self.dataset), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint", self.fingerprint) != self.fingerprint:
            logger.warning(
                f"The training set changed since the checkpoint was written ({state.get('num_items')} -> "
                f"{len(self.dataset)} items, or other files): the resumed run sees other images than the "
                "interrupted run would have."
            )
        if (state.get("batch_size"), state.get("world_size")) != (self.batch_size, self.world_size):
            logger.warning(
                f"The checkpoint was written with {state.get('world_size')} processes x {state.get('batch_size')} "
                f"images per batch, this run has {self.world_size} x {self.batch_size}: the data loader resumes at "
                "the same iteration of a different stream, not at the images the interrupted run would have seen."
            )
        self.seed = int(state["seed"])

    def __iter__(self):
        sampler = ResumableBatchSampler(
            len(self.dataset), self.batch_size, seed=self.seed, groups=self.groups, rank=self.rank,
            world_size=self.world_size, start=self.start,
        )
        dataset = SeededMapDataset(self.dataset, self.mapper, _derived_seed(self.seed, 1), self.groups)
        loader = torchdata.DataLoader(
            dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=trivial_batch_collator,
            # its own generator: creating the iterator must not draw from the global RNG, which the model uses
            generator=torch.Generator().manual_seed(_derived_seed(self.seed, 2)),
        )
        yield from loader
