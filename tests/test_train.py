"""The pieces of train_solution.py: LR schedule, training step, accumulation, evaluation."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_gpt

import train_solution as train
from data_solution import BlockDataset


def reference_lr(step, warmup, total, max_lr, min_lr):
    """The schedule written out independently: linear warmup from max_lr / warmup, then
    half a cosine from max_lr to min_lr, then min_lr."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-3 / 10),  # warmup starts at max_lr / warmup_steps, not at 0
        (9, 1e-3),  # warmup - 1: the peak
        (10, 1e-3),  # warmup: cosine starts at the peak
        (55, 1e-4 + 0.5 * 9e-4),  # halfway through the cosine
        (99, 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 89 / 90))),  # total - 1
        (100, 1e-4),  # total: min_lr
        (250, 1e-4),  # beyond: stays at min_lr
    ],
)
def test_get_lr_table(step, expected):
    assert train.get_lr(step, 10, 100, 1e-3, 1e-4) == pytest.approx(expected, rel=1e-12)


def test_get_lr_matches_reference_everywhere_and_without_warmup():
    for warmup in (0, 1, 7):
        for step in range(0, 60):
            assert train.get_lr(step, warmup, 50, 6e-4, 6e-5) == pytest.approx(
                reference_lr(step, warmup, 50, 6e-4, 6e-5), rel=1e-12
            )


# --- the training step ------------------------------------------------------------------


def random_batch(batch_size, seed, vocab_size=32, block_size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    return x, torch.roll(x, -1, dims=1)


def sgd_update(model, micro_batches, accumulation_reference=False):
    """One train_step with plain SGD at lr=1: the parameter change is exactly -gradient."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train.train_step(model, optimizer, scaler, micro_batches, lr=1.0, grad_clip=0.0)
    assert optimizer.param_groups[0]["lr"] == 1.0, "train_step must set the LR it is given"
    grads = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    return grads, stats


def test_accumulated_gradients_equal_the_big_batch_gradient():
    x, y = random_batch(8, seed=1)
    big_grads, big_stats = sgd_update(tiny_gpt(seed=3), [(x, y)])
    micro = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    acc_grads, acc_stats = sgd_update(tiny_gpt(seed=3), micro)
    for big, acc in zip(big_grads, acc_grads, strict=True):
        torch.testing.assert_close(acc, big, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(acc_stats.loss, big_stats.loss, atol=1e-6, rtol=1e-6)
    assert big_stats.grad_norm > 0


def test_gradients_are_cleared_after_the_step():
    model = tiny_gpt()
    sgd_update(model, [random_batch(2, seed=0)])
    assert all(p.grad is None for p in model.parameters()), "zero_grad(set_to_none=True) after the step"


def test_gradient_clipping_limits_the_update():
    model = tiny_gpt(seed=5)
    x, y = random_batch(4, seed=2)
    reference = tiny_gpt(seed=5)
    _, loss = reference(x, targets=y)
    loss.backward()
    full_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    stats = train.train_step(
        model, optimizer, torch.amp.GradScaler("cpu", enabled=False), [(x, y)], 1.0, 0.01
    )
    step = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(stats.grad_norm, full_norm, rtol=1e-5, atol=1e-6)
    assert full_norm > 0.01
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4), (
        "the update's norm must be clipped to grad_clip"
    )


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    pattern = np.tile(np.arange(10, dtype=np.uint16), 200)
    dataset = BlockDataset(pattern, 16, stride=3)
    model = tiny_gpt()
    optimizer = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cpu")
    scaler = train.make_grad_scaler(torch.device("cpu"), torch.float32)
    stream = train.BatchStream(dataset, batch_size=8, seed=0)
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


def test_evaluate_is_deterministic_and_restores_train_mode():
    model = tiny_gpt(dropout=0.3)
    batches = [random_batch(4, seed=s) for s in range(3)]
    model.train()
    a = train.evaluate(model, batches)
    b = train.evaluate(model, batches)
    assert a == b, "evaluation must not depend on dropout or randomness"
    assert model.training, "evaluate must put the model back in training mode"
    with torch.no_grad():
        model.eval()
        expected = np.mean([model(x, targets=y)[1].item() for x, y in batches])
    assert a.loss == pytest.approx(expected, rel=1e-6)
    assert a.perplexity == pytest.approx(math.exp(a.loss))


def test_fixed_eval_batches_cover_the_split_evenly():
    dataset = BlockDataset(np.arange(1000, dtype=np.uint16), 9)
    batches = train.fixed_eval_batches(dataset, batch_size=4, n_batches=3)
    assert len(batches) == 3 and all(x.shape == (4, 9) for x, _ in batches)
    starts = [int(x[i, 0]) for x, _ in batches for i in range(4)]
    assert starts[0] == 0 and starts[-1] == (len(dataset) - 1) * 9
    again = train.fixed_eval_batches(dataset, 4, 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True)), (
        "the same batches every time"
    )


def test_bits_per_byte():
    # 1 nat/token, 2 tokens per 6 bytes: 2 nats / 6 bytes = 1/(3 ln 2) bits per byte
    assert train.bits_per_byte(1.0, 2, 6) == pytest.approx(1 / (3 * math.log(2)))


# --- data order ---------------------------------------------------------------------------


def test_batch_stream_restarts_mid_epoch_with_the_same_batches():
    dataset = BlockDataset(np.arange(500, dtype=np.uint16), 8)
    full = train.BatchStream(dataset, batch_size=4, seed=7)
    expected = [next(full)[0] for _ in range(40)]  # several epochs (15 batches each)
    first = train.BatchStream(dataset, batch_size=4, seed=7)
    seen = [next(first)[0] for _ in range(22)]
    resumed = train.BatchStream(dataset, batch_size=4, seed=7, **first.state())
    seen += [next(resumed)[0] for _ in range(18)]
    assert all(torch.equal(a, b) for a, b in zip(expected, seen, strict=True))
    epoch0 = torch.cat(expected[:15])[:, 0].tolist()
    assert len(set(epoch0)) == 60, "an epoch visits every window at most once"
    assert not torch.equal(torch.cat(expected[:15]), torch.cat(expected[15:30])), "each epoch is reshuffled"
