"""The datasets of a run, the order of its training batches, and its validation batches.

`BatchStream` serves the training batches, reshuffled every epoch, in an order that a
checkpoint can reproduce exactly: (epoch, position) is all it needs, so a resumed run
sees precisely the batches the stopped run would have seen next. Under DDP it gives
each process its own share of every global batch.

`fixed_eval_batches` serves the validation batches: the same windows at every
evaluation of every run with the same --eval_tokens, shared out over the processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from course.corpus import load_tokens
from course.errors import DataError


def block_dataset(make_dataset: Callable, prepared: Path, split: str, block_size: int) -> Dataset:
    """make_dataset(tokens, block_size) over the token file of one split (a BlockDataset)."""
    try:
        return make_dataset(load_tokens(prepared, split), block_size)
    except DataError as err:
        raise DataError(f"{split} split of {prepared.name}: {err}") from None


def limit_windows(dataset: Dataset, max_tokens: int) -> Dataset:
    """All windows, or max_tokens worth of them spread evenly over the split, so that
    a small budget still sees every play rather than the first few."""
    n_windows = max(1, max_tokens // dataset.block_size)
    if not max_tokens or n_windows >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n_windows).round().astype(int).tolist())


def document_datasets(
    make_dataset: Callable, path: Path, tokenizer, max_seq_len: int, val_fraction: float = 0.1
) -> tuple[Dataset, Dataset]:
    """MiniMind-style datasets, make_dataset(path, tokenizer, max_seq_len, documents) (a
    PretrainDataset): the last val_fraction of the documents for validation."""
    n_documents = len(make_dataset(path, tokenizer, max_seq_len))
    n_val = max(1, int(n_documents * val_fraction))
    if n_documents - n_val < 1:
        raise DataError(
            f"{path} has {n_documents} document(s); documents mode needs at least 2 (train and val)"
        )
    return (
        make_dataset(path, tokenizer, max_seq_len, range(n_documents - n_val)),
        make_dataset(path, tokenizer, max_seq_len, range(n_documents - n_val, n_documents)),
    )


def validation_windows(n_windows: int, window_tokens: int, eval_tokens: int) -> list[int]:
    """The windows an evaluation reads: eval_tokens worth of them (0: every window),
    spread evenly over the whole validation split. They depend on the budget alone,
    never on the batch size or the number of processes, so the validation loss of one
    set of weights reads the same in every run: a change in it is a change in the
    model, not in the sample."""
    wanted = max(1, eval_tokens // window_tokens) if eval_tokens else n_windows
    return np.linspace(0, n_windows - 1, min(wanted, n_windows)).round().astype(int).tolist()


def fixed_eval_batches(
    dataset: Dataset, eval_tokens: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the validation windows (validation_windows), in batches:
    every world_size-th window, from the rank-th on, so that the processes together read
    each window once and their loss sums add up to the whole.

    Every process gets the same number of batches, none of them empty: under FSDP each
    forward pass gathers the weights from all the processes, so they must all make as
    many. Where the shares differ by one window, a batch may hold one more than batch_size."""
    window_tokens = len(dataset[0][1])
    windows = validation_windows(len(dataset), window_tokens, eval_tokens)
    if len(windows) < world_size:
        raise DataError(
            f"an evaluation of {len(windows)} validation window(s) cannot be shared by {world_size} "
            f"processes: raise --eval_tokens to at least {world_size * window_tokens}"
        )
    share = windows[rank::world_size]
    largest_share, smallest_share = math.ceil(len(windows) / world_size), len(windows) // world_size
    n_batches = min(math.ceil(largest_share / batch_size), smallest_share)
    batches = []
    for chunk in np.array_split(np.array(share), n_batches):
        pairs = [dataset[int(i)] for i in chunk]
        batches.append((torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])))
    return batches


class RemainingOfEpoch(Sampler[int]):
    """The windows a BatchStream has not served yet in its current epoch, read afresh
    each time the DataLoader starts an epoch (so one loader, and its workers, serve
    every epoch)."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __iter__(self):
        return iter(self.stream.remaining_windows())


class BatchStream:
    """Training batches, reshuffled every epoch, that can restart mid-epoch.

    The order of epoch e is a permutation drawn from seed + e alone, so
    (epoch, position) is all a checkpoint needs to continue with the very batch
    the run would have seen next: no batch is replayed and none is skipped.
    Under DDP, DistributedSampler gives each of the world_size processes every
    world_size-th window of that permutation, so together they read each global
    batch once (with world_size = 1 it is the plain permutation). Micro-batch p of
    all processes together is thus windows p·B·W to (p+1)·B·W of the permutation,
    whatever the split of B·W into batch size and processes: a run resumed with
    another split goes on from the same window (state()'s "windows").
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        position: int = 0,
        windows: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        **loader_options,
    ) -> None:
        if len(dataset) < batch_size * world_size:
            raise DataError(
                f"the training split has {len(dataset)} windows, fewer than one batch "
                f"of {batch_size} per process; use a smaller --batch_size or more text"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(dataset) // world_size // batch_size
        # The loader draws its workers' seeds from its own generator; without one it would
        # draw from the global RNG and shift every later dropout mask. Worker processes
        # (--num_workers) stay alive from one epoch to the next.
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=RemainingOfEpoch(self),
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=loader_options.get("num_workers", 0) > 0,
            **loader_options,
        )
        self.seek(epoch, position, windows)

    def state(self) -> dict:
        """Where the stream is: the epoch, this process's batches of it served, and the
        windows of it that all processes together were served."""
        return {"epoch": self.epoch, "position": self.position, "windows": self.windows_served()}

    def windows_served(self) -> int:
        return self.position * self.batch_size * self.world_size

    def seek(self, epoch: int, position: int, windows: int | None = None) -> None:
        """Continue from batch `position` of epoch `epoch` (a state() from a checkpoint),
        or, where `windows` is given, from that window of the epoch: the same place for a
        run resumed with another batch size or number of processes (a checkpoint saved
        before state() had "windows" is resumed with the same ones, course.cli)."""
        if windows is not None:
            micro_batch = self.batch_size * self.world_size  # windows, over all processes
            if windows % micro_batch:
                raise DataError(
                    f"the checkpoint is {windows} windows into epoch {epoch}, which is no whole number of "
                    f"micro-batches of {self.batch_size} × {self.world_size} process(es) (its last step "
                    "spanned the end of an epoch): resume with the saved run's --batch_size and number of "
                    "processes, or a multiple of its --accumulation_steps"
                )
            position = windows // micro_batch
        self.epoch, self.position, self._iterator = epoch, position, None

    def remaining_windows(self) -> list[int]:
        """This process's windows of the current epoch that have not been served yet."""
        sampler = DistributedSampler(
            self.dataset, self.world_size, self.rank, shuffle=True, seed=self.seed, drop_last=True
        )
        sampler.set_epoch(self.epoch)  # permutation from seed + epoch
        return list(sampler)[self.position * self.batch_size :]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Epoch finished: start the next one. (Past its end only when resumed with a larger
        # micro-batch, whose epoch leaves out more of the windows left over by drop_last.)
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self.position += 1
        return batch
