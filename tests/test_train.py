"""The training step as a whole, and the machinery around the loop (course/): batches,
bits per byte, the NaN guard. The TODO functions (get_lr, set_lr, compute_loss,
clip_and_step, accumulate_gradients, the AMP helpers, evaluate) are tested by the
graded tests in test_todo_train.py, which run on the solution by default."""

import math
import types

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, tiny_gpt

import train_solution as train
from course.batches import BatchStream, fixed_eval_batches
from course.errors import DataError, TrainingDiverged
from course.guards import check_finite
from course.logbook import bits_per_byte, read_metrics
from course.run_folder import METRICS_FILE
from data_solution import BlockDataset
from optim import configure_optimizers


def random_batch(batch_size, seed, vocab_size=32, block_size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    return x, torch.roll(x, -1, dims=1)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    pattern = np.tile(np.arange(10, dtype=np.uint16), 200)
    dataset = BlockDataset(pattern, 16, stride=3)
    model = tiny_gpt()
    optimizer = configure_optimizers(model, 0.1, 3e-3, (0.9, 0.95), "cpu")
    scaler = train.make_grad_scaler(torch.device("cpu"), torch.float32)
    stream = BatchStream(dataset, batch_size=8, seed=0)
    batches = [next(stream) for _ in range(40)]
    first = train.evaluate(model, batches[:4]).loss
    for i in range(0, 40, 2):
        train.train_step(model, optimizer, scaler, batches[i : i + 2], 3e-3, 1.0)
    last = train.evaluate(model, batches[:4]).loss
    assert first > 3.0 and last < first - 1.5, f"loss went from {first:.2f} to {last:.2f}"


def test_bfloat16_autocast_step_runs_on_cpu():
    model = tiny_gpt()
    ctx = train.autocast_context(torch.device("cpu"), torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters())
    stats = train.train_step(
        model,
        optimizer,
        train.make_grad_scaler(torch.device("cpu"), torch.bfloat16),
        [random_batch(2, 0)],
        1e-3,
        1.0,
        ctx,
    )
    assert torch.isfinite(stats.loss)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay float32 under AMP"


# --- evaluation ---------------------------------------------------------------------------


def test_the_eval_windows_are_spread_over_the_split_and_fixed():
    dataset = BlockDataset(np.arange(1000, dtype=np.uint16), 9)  # 110 windows of 9 tokens
    batches = fixed_eval_batches(dataset, eval_tokens=12 * 9, batch_size=4)
    assert len(batches) == 3 and all(x.shape == (4, 9) for x, _ in batches)
    starts = [int(x[i, 0]) for x, _ in batches for i in range(4)]
    assert starts[0] == 0 and starts[-1] == (len(dataset) - 1) * 9, "from the first window to the last"
    again = fixed_eval_batches(dataset, 12 * 9, 4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True)), (
        "the same batches every time"
    )
    whole = fixed_eval_batches(dataset, eval_tokens=0, batch_size=32)
    assert sum(len(x) for x, _ in whole) == len(dataset), "--eval_tokens 0: every window of the split"


def window_starts(batches) -> list[int]:
    return [int(x[i, 0]) for x, _ in batches for i in range(len(x))]


@pytest.mark.parametrize("n_windows, batch_size", [(30, 4), (31, 4), (7, 1), (9, 2), (100, 128)])
def test_the_processes_share_out_the_same_windows_in_as_many_batches(n_windows, batch_size):
    dataset = BlockDataset(np.arange(2000, dtype=np.uint16), 9)
    alone = sorted(window_starts(fixed_eval_batches(dataset, n_windows * 9, batch_size)))
    assert len(alone) == n_windows
    for world_size in (2, 3):
        shares = [fixed_eval_batches(dataset, n_windows * 9, batch_size, rank, world_size)
                  for rank in range(world_size)]  # fmt: skip
        together = sorted(start for share in shares for start in window_starts(share))
        assert together == alone, f"{world_size} processes read each window once, the same windows as one"
        assert len({len(share) for share in shares}) == 1, (
            "every process makes as many forward passes (FSDP gathers the weights in each)"
        )
        assert all(len(x) >= 1 for share in shares for x, _ in share), "no empty batch"


def test_more_processes_than_eval_windows_is_refused():
    dataset = BlockDataset(np.arange(200, dtype=np.uint16), 9)
    with pytest.raises(DataError, match="raise --eval_tokens to at least 27"):
        fixed_eval_batches(dataset, eval_tokens=9, batch_size=4, rank=0, world_size=3)


def test_the_same_weights_read_the_same_val_loss_at_any_batch_size():
    dataset = BlockDataset(np.random.default_rng(0).integers(0, 32, 5000).astype(np.uint16), 16)
    model = tiny_gpt()
    losses = [train.evaluate(model, fixed_eval_batches(dataset, 2048, batch_size)).loss
              for batch_size in (8, 32, 128)]  # fmt: skip
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6), f"batch 8, 32, 128: {losses}"


def test_the_in_run_val_loss_of_the_same_weights_is_the_same_at_batch_8_32_and_128(corpus_txt, tmp_path):
    """Step 0's evaluation (the same initial weights, from --seed) in three runs."""
    step_0 = []
    for batch_size in (8, 32, 128):
        save_dir = tmp_path / f"batch{batch_size}"
        args = [*TINY_MODEL, "--data_path", str(corpus_txt), "--batch_size", str(batch_size), "--max_steps",
                "1", "--eval_tokens", "0", "--sample_tokens", "0", "--save_dir", str(save_dir)]  # fmt: skip
        assert train.main(args) == 0
        step_0.append(next(r["val_loss"] for r in read_metrics(save_dir / METRICS_FILE) if "val_loss" in r))
    assert step_0 == pytest.approx([step_0[0]] * 3, rel=1e-6), f"val loss at batch 8, 32, 128: {step_0}"


def test_bits_per_byte():
    # 1 nat/token, 2 tokens per 6 bytes: 2 nats / 6 bytes = 1/(3 ln 2) bits per byte
    assert bits_per_byte(1.0, 2, 6) == pytest.approx(1 / (3 * math.log(2)))


# --- data order ---------------------------------------------------------------------------


def test_batch_stream_restarts_mid_epoch_with_the_same_batches():
    dataset = BlockDataset(np.arange(500, dtype=np.uint16), 8)
    full = BatchStream(dataset, batch_size=4, seed=7)
    expected = [next(full)[0] for _ in range(40)]  # several epochs (15 batches each)
    first = BatchStream(dataset, batch_size=4, seed=7)
    seen = [next(first)[0] for _ in range(22)]
    resumed = BatchStream(dataset, batch_size=4, seed=7, **first.state())
    seen += [next(resumed)[0] for _ in range(18)]
    assert all(torch.equal(a, b) for a, b in zip(expected, seen, strict=True))
    epoch0 = torch.cat(expected[:15])[:, 0].tolist()
    assert len(set(epoch0)) == 60, "an epoch visits every window at most once"
    assert not torch.equal(torch.cat(expected[:15]), torch.cat(expected[15:30])), "each epoch is reshuffled"


def streams(dataset, batch_size: int, world_size: int, **state) -> list[BatchStream]:
    """The streams of every process of a run (seed 7), sent to `state` if given."""
    return [BatchStream(dataset, batch_size, 7, rank=rank, world_size=world_size, **state)
            for rank in range(world_size)]  # fmt: skip


def step_windows(processes: list[BatchStream], accumulation: int) -> set[int]:
    """The windows (by their first token) that one optimizer step reads over all processes."""
    return {int(x[0]) for stream in processes for _ in range(accumulation) for x in next(stream)[0]}


def test_a_stream_resumed_with_another_split_of_the_global_batch_reads_the_same_windows_each_step():
    """8 windows a step: 2 processes × batch 2 × 2 micro-batches, resumed after 3 steps as 1
    process × batch 4 × 2 (the same 4 windows a micro-batch: exactly the same steps, across
    the end of the epoch too) or × batch 2 × 4 (the same steps to the end of the epoch,
    whose leftover windows then differ: fewer than one micro-batch). A checkpoint whose last
    step spanned the end of an epoch cannot go on with a larger micro-batch: refused."""
    dataset = BlockDataset(np.arange(500, dtype=np.uint16), 8)  # 62 windows: 7.5 steps an epoch
    saved = streams(dataset, 2, 2)
    expected = [step_windows(saved, 2) for _ in range(12)]
    assert len(set().union(*expected[:7])) == 56, "the 7 steps of epoch 0 read each window once"
    first = streams(dataset, 2, 2)
    for _ in range(3):
        step_windows(first, 2)
    state = first[0].state()
    assert state == first[1].state() == {"epoch": 0, "position": 6, "windows": 24}
    same_micro_batch = streams(dataset, 4, 1, **state)
    assert [step_windows(same_micro_batch, 2) for _ in range(9)] == expected[3:]
    more_micro_batches = streams(dataset, 2, 1, **state)
    assert [step_windows(more_micro_batches, 4) for _ in range(4)] == expected[3:7]
    for _ in range(5):  # into step 8, which began at the end of epoch 0
        step_windows(first, 2)
    with pytest.raises(DataError, match="4 windows into epoch 1, which is no whole number of micro-batches"):
        streams(dataset, 8, 1, **first[0].state())


def test_check_finite_stops_on_a_bad_loss_or_gradient():
    fine, no_bad_steps = torch.tensor(3.0), torch.zeros((), dtype=torch.int)
    kept = "this run had saved no checkpoint yet"
    check_finite(fine, no_bad_steps, 1, 5, kept)
    with pytest.raises(TrainingDiverged, match=f"the loss became nan between steps 1 and 5.*{kept}"):
        check_finite(torch.tensor(float("nan")), no_bad_steps, 1, 5, kept)
    with pytest.raises(TrainingDiverged, match="the gradient norm became inf or nan"):
        check_finite(fine, torch.ones((), dtype=torch.int), 1, 5, kept)


def test_a_loss_too_large_for_math_exp_is_an_infinite_perplexity_or_a_divergence():
    """A model thrown far by one huge step scores the validation windows with a loss of
    thousands of nats per token: its perplexity is inf, never an OverflowError; a learner's
    evaluate that raises one (math.exp) stops the run as a divergence, in one line."""
    from course import open_todos

    model = tiny_gpt()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e5)  # logits of ~1e4: a loss far above math.exp's 709
    batches = [random_batch(4, seed=0)]
    result = train.evaluate(model, batches)
    assert result.loss > 1000 and result.perplexity == math.inf

    def evaluate_with_math_exp(*args):
        return train.EvalResult(result.loss, math.exp(result.loss))

    with pytest.raises(
        TrainingDiverged, match="too large for math.exp to give its perplexity: the model diverged"
    ):
        open_todos.checked(evaluate_with_math_exp)(model, batches)


def test_mfu_is_per_gpu_when_several_processes_train(tmp_path):
    """tokens/s counts the tokens of every process; MFU divides by the peak of all the GPUs."""
    import argparse

    from course.distributed import ProcessGroup
    from course.logbook import Logbook
    from course.run_folder import RunFolder

    args = argparse.Namespace(save_dir=str(tmp_path), batch_size=4, accumulation_steps=1, max_seq_len=8,
                              dataset_mode="blocks", use_moe=0, tensorboard=0, use_wandb=0)  # fmt: skip
    meta, scaler = {"val_tokens": 1, "val_bytes": 1}, torch.amp.GradScaler("cpu", enabled=False)
    group = ProcessGroup(rank=0, world_size=2)
    folder = RunFolder.claim(tmp_path / "out", resume=False, overwrite=False)
    book = Logbook(args, group, torch.device("cpu"), torch.float32, None, meta, scaler, None, None, folder)
    book.peak_flops = 1e12  # as on a GPU of the table
    with book.progress(0, 1):
        book.step_done(step_stats(loss=2.0, targets=32))
        book.log_train(1, 1e-3, flops_per_token=1000, window=book.window * 2)  # two equal processes
    record = book.records[-1]
    assert record["mfu"] == pytest.approx(1000 * record["tokens_per_sec"] / (2 * 1e12)), (
        "with 2 processes, MFU = FLOPs per second of all processes / (2 × one GPU's peak)"
    )
    folder.release()


def step_stats(loss: float, targets: int, aux_loss: float = 0.0):
    return train.StepStats(loss=torch.tensor(loss), aux_loss=torch.tensor(aux_loss),
                           targets=torch.tensor(targets), grad_norm=torch.tensor(1.0))  # fmt: skip


def test_the_logged_loss_weighs_every_real_target_of_every_step_and_process(tmp_path, monkeypatch):
    """With padded documents steps and processes hold different numbers of real targets:
    the logged loss is the mean over all of them, and tokens/s counts them, not padding."""
    import argparse

    from course.distributed import ProcessGroup
    from course.logbook import Logbook
    from course.run_folder import RunFolder

    args = argparse.Namespace(save_dir=str(tmp_path), batch_size=4, accumulation_steps=1, max_seq_len=8,
                              dataset_mode="documents", use_moe=1, tensorboard=0, use_wandb=0)  # fmt: skip
    meta = {"val_tokens": 1, "val_bytes": 1, "train_tokens": 1, "train_bytes": 1}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    folder = RunFolder.claim(tmp_path / "out", resume=False, overwrite=False)
    book = Logbook(args, ProcessGroup(rank=0, world_size=2), torch.device("cpu"), torch.float32, None, meta,
                   scaler, None, None, folder)  # fmt: skip
    other_process = torch.tensor([6.0 * 50, 0.5 * 50, 50, 50])  # its window: a loss of 6 over 50 targets
    now = [100.0]  # a clock that moves only when told to
    monkeypatch.setattr("course.logbook.time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    with book.progress(0, 2):
        book.step_done(step_stats(loss=2.0, targets=10, aux_loss=0.1))
        book.step_done(step_stats(loss=4.0, targets=30, aux_loss=0.3))
        now[0] += 2.0
        book.log_train(2, 1e-3, flops_per_token=1000, window=book.window + other_process)
    record = book.records[-1]
    assert record["loss"] == pytest.approx((2 * 10 + 4 * 30 + 6 * 50) / 90)
    assert record["aux_loss"] == pytest.approx((0.1 * 10 + 0.3 * 30 + 0.5 * 50) / 90)
    assert record["tokens_per_sec"] == pytest.approx(90 / 2.0), (
        "90 real targets in 2 s (padding does not count)"
    )
    folder.release()


def test_a_token_file_dataset_pickles_as_a_path_and_loads_in_spawned_workers(tmp_path):
    """macOS and Windows start DataLoader workers with spawn, which pickles the dataset:
    the token file must travel as its path, not as a copy of every token."""
    import pickle

    from course.corpus import TokenFile

    tokens = (np.arange(200_000) % 50_000).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    dataset = BlockDataset(TokenFile(tmp_path / "train.bin", "uint16"), 16)
    assert len(pickle.dumps(dataset)) < 10_000, (
        "the pickled dataset should hold the path, not 400 kB of tokens"
    )
    stream = BatchStream(dataset, batch_size=4, seed=0, num_workers=1, multiprocessing_context="spawn")
    in_process = BatchStream(dataset, batch_size=4, seed=0)
    for _ in range(3):
        (x, y), (x_ref, y_ref) = next(stream), next(in_process)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref), "a spawned worker serves the same batches"
    assert stream.loader.persistent_workers, "workers stay alive from one epoch to the next"


def test_an_open_half_of_the_lr_schedule_is_decided_once_at_the_first_step():
    """TODO 2b open, 2a done: the warmup follows the learner's ramp, the rest stays at max_lr,
    and the open half is never called again once the loop runs."""
    from course import open_todos

    calls = []

    def get_lr(step, warmup_steps, total_steps, max_lr, min_lr):
        calls.append(step)
        if step >= warmup_steps:
            raise NotImplementedError("TODO 2b: cosine decay")
        return max_lr * (step + 1) / warmup_steps

    lr_at = open_todos.schedule_or_constant(get_lr)
    assert lr_at(0, 4, 10, 1.0, 0.1) == 0.25
    assert calls == [0, 4, 0], "each half is tried once, at its first step, before the first LR"
    assert [lr_at(step, 4, 10, 1.0, 0.1) for step in range(10)] == [0.25, 0.5, 0.75, 1.0] + [1.0] * 6
    assert calls == [0, 4, 0, 0, 1, 2, 3], "the open half is not called inside the loop"
