"""The datasets of a run, the order of its training batches (`BatchStream`: reshuffled every
epoch, resumed exactly), and its validation batches (`fixed_eval_batches`: the same windows at
every evaluation), each shared out over the processes."""

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
    """All windows, or max_tokens worth spread evenly: a small budget still sees every play."""
    n_windows = max(1, max_tokens // dataset.block_size)
    if not max_tokens or n_windows >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n_windows).round().astype(int).tolist())


def document_datasets(
    make_dataset: Callable, path: Path, tokenizer, max_seq_len: int, val_fraction: float = 0.1
) -> tuple[Dataset, Dataset]:
    """MiniMind-style: make_dataset(path, tokenizer, max_seq_len, documents) (a PretrainDataset),
    the last val_fraction of the documents for validation."""
    n_documents = len(make_dataset(path, tokenizer, max_seq_len))
    n_val = max(1, int(n_documents * val_fraction))
    if n_documents - n_val < 1:
        raise DataError(
            f"{path} has {n_documents} document(s); documents mode needs at least 2 (train and val)"
        )
    train, val = range(n_documents - n_val), range(n_documents - n_val, n_documents)
    return make_dataset(path, tokenizer, max_seq_len, train), make_dataset(path, tokenizer, max_seq_len, val)


def validation_windows(n_windows: int, window_tokens: int, eval_tokens: int) -> list[int]:
    """eval_tokens worth of windows (0: all), spread evenly over the split. They depend on the
    budget alone, not the batch size or the processes: a change in the validation loss is a
    change in the model, not in the sample."""
    wanted = max(1, eval_tokens // window_tokens) if eval_tokens else n_windows
    return np.linspace(0, n_windows - 1, min(wanted, n_windows)).round().astype(int).tolist()


def fixed_eval_batches(
    dataset: Dataset, eval_tokens: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the validation windows (every world_size-th from the rank-th on: the
    processes' loss sums add up to the whole), in as many batches on every process, none empty
    (under FSDP each forward pass gathers from all); a batch may hold one more than batch_size."""
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
        xs, ys = zip(*(dataset[int(i)] for i in chunk), strict=True)
        batches.append((torch.stack(xs), torch.stack(ys)))
    return batches


class RemainingOfEpoch(Sampler[int]):
    """This process's windows that a BatchStream has not served yet in its epoch, read afresh
    each time the DataLoader starts an epoch: one loader, and its workers, serve every epoch."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __iter__(self):
        s = self.stream
        sampler = DistributedSampler(s.dataset, s.world_size, s.rank, seed=s.seed, drop_last=True)
        sampler.set_epoch(s.epoch)  # shuffled (its default) by a permutation from seed + epoch
        return iter(list(sampler)[s.position * s.batch_size :])


class BatchStream:
    """Training batches, reshuffled every epoch, that can restart mid-epoch.

    Epoch e's order is a permutation drawn from seed + e alone: (epoch, position) is all a
    checkpoint needs. Each of W processes reads every W-th window of it, so micro-batch p of
    all is windows p·B·W to (p+1)·B·W: a resume with another B or W goes on from the same one.
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
        # The loader's own generator seeds its workers: drawing from the global RNG would shift
        # every later dropout mask. Workers (--num_workers) stay alive from epoch to epoch.
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
        """The epoch, this process's batches of it served, and all processes' windows of it."""
        windows = self.position * self.batch_size * self.world_size
        return {"epoch": self.epoch, "position": self.position, "windows": windows}

    def seek(self, epoch: int, position: int, windows: int | None = None) -> None:
        """Continue from batch `position` of `epoch` (a checkpoint's state()), or from window
        `windows` of it where given: the same place with another batch size or world size."""
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

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Epoch finished (or past its end: resumed with a larger micro-batch): start the next one.
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self.position += 1
        return batch
