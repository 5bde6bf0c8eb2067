"""Graded: TODOs 2a-6 of train_exercise.py.

Run `python train_exercise.py --test` for the scoreboard, `--test 3c` for one TODO, or
`pytest --impl exercise --todo 3c`. Each test uses your code for its own TODO and the
reference code for the others, and compares behaviour with a reference written here.
"""

import copy
import math
import threading
import warnings
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn.functional as F
from conftest import load_balancing_reference, tiny_gpt

from course import run_folder
from model import GPT, IGNORE_INDEX, GPTConfig
from optim import configure_optimizers

MAX_LR, MIN_LR = 6e-4, 6e-5


# --- TODO 2a / 2b: the learning-rate schedule ---------------------------------------------


@pytest.mark.todo("2a")
@pytest.mark.parametrize("warmup", [1, 4, 10])
def test_todo_2a_linear_warmup(learner, warmup):
    for step in range(warmup):
        got = learner.train.get_lr(step, warmup, 100, MAX_LR, MIN_LR)
        expected = MAX_LR * (step + 1) / warmup
        assert not (step == 0 and got == 0), (
            "at step 0 the LR is 0, so the first step learns nothing: the ramp must already be above 0 "
            "at step 0, and reach max_lr at the last warmup step (warmup_steps - 1)"
        )
        assert got == pytest.approx(expected, rel=1e-9), (
            f"warmup: at step {step} of {warmup} the LR should be {expected:.4g}, got {got:.4g}: it grows "
            "by the same amount every step, from above 0 at step 0 to max_lr at step warmup_steps - 1"
        )
    assert learner.train.get_lr(warmup - 1, warmup, 100, MAX_LR, MIN_LR) == pytest.approx(MAX_LR), (
        "warmup must reach max_lr at its last step (warmup_steps - 1)"
    )


def cosine(progress):
    return MIN_LR + 0.5 * (MAX_LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def cosine_to_zero(progress):  # a plausible mistake: forgetting min_lr
    return 0.5 * MAX_LR * (1 + math.cos(math.pi * progress))


@pytest.mark.todo("2b")
@pytest.mark.parametrize("warmup, total", [(10, 100), (0, 50), (3, 4)])
def test_todo_2b_cosine_decay(learner, warmup, total):
    get_lr = learner.train.get_lr
    assert get_lr(warmup, warmup, total, MAX_LR, MIN_LR) == pytest.approx(MAX_LR, rel=1e-9), (
        "the cosine starts at max_lr at step == warmup_steps (progress 0)"
    )
    table = {step: (get_lr(step, warmup, total, MAX_LR, MIN_LR), step) for step in range(warmup, total)}
    wrong = {
        step: got
        for step, (got, _) in table.items()
        if got != pytest.approx(cosine((step - warmup) / (total - warmup)), rel=1e-9)
    }
    if wrong:
        matches = lambda formula: all(got == pytest.approx(formula(step)) for step, got in wrong.items())
        if matches(lambda step: cosine((step - warmup) / total)):
            pytest.fail(
                "the cosine must last total_steps - warmup_steps steps: divide by that, not by total_steps"
            )
        if matches(lambda step: cosine(step / total)):
            pytest.fail(
                "the cosine's progress counts from step 0: it must count from the end of warmup, "
                "0 at step warmup_steps and 1 at step total_steps"
            )
        if matches(lambda step: cosine_to_zero((step - warmup) / (total - warmup))):
            pytest.fail(
                f"the cosine must fall from max_lr to min_lr, not to 0: near the end, at step {total - 1}, "
                f"the LR should be {cosine((total - 1 - warmup) / (total - warmup)):.6g}, "
                f"got {wrong[total - 1]:.6g}; scale the cosine over max_lr - min_lr and add min_lr"
            )
        step = max(wrong, key=lambda s: abs(wrong[s] - cosine((s - warmup) / (total - warmup))))
        expected = cosine((step - warmup) / (total - warmup))
        pytest.fail(
            f"cosine: at step {step} (warmup {warmup}, total {total}) the LR should be {expected:.6g}, "
            f"got {wrong[step]:.6g} (off by {wrong[step] - expected:+.3g}; the step where the difference "
            "is largest): half a cosine period, from max_lr at progress 0 down to min_lr at progress 1"
        )
    for step in (total, total + 1, 10 * total):
        got = get_lr(step, warmup, total, MAX_LR, MIN_LR)
        assert got == pytest.approx(MIN_LR, rel=1e-9), (
            f"from total_steps on the LR stays at min_lr = {MIN_LR:g}; at step {step} got {got:.4g}"
        )


# --- TODO 3a / 3b: set the LR, the forward pass ------------------------------------------------


@pytest.mark.todo("3a")
def test_todo_3a_set_lr_on_every_param_group(learner):
    optimizer = configure_optimizers(tiny_gpt(), 0.1, 1.0, (0.9, 0.95), "cpu")
    try:
        learner.train.set_lr(optimizer, 0.0123)
    except KeyError as err:
        pytest.fail(
            f"set_lr looked up {err} in a parameter group that has none: AdamW's groups carry no "
            "lr_scale, and a group without one gets lr itself. Read the scale only where a group has it"
        )
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == [0.0123, 0.0123], (
        f"every param group needs the new LR (there are {len(lrs)}: with and without weight decay); got {lrs}"
    )
    decays = [g["weight_decay"] for g in optimizer.param_groups]
    assert decays == [0.1, 0.0], (
        f"set_lr must change the LR only; the weight decays became {decays}, not [0.1, 0.0]"
    )


@pytest.mark.todo("3a", case="Muon's lr_scale")
def test_todo_3a_a_group_with_an_lr_scale_gets_lr_times_its_scale(learner):
    optimizer = configure_optimizers(tiny_gpt(), 0.1, 1.0, (0.9, 0.95), "cpu", muon_lr_scale=20.0)
    learner.train.set_lr(optimizer, 0.001)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == pytest.approx([0.02, 0.001, 0.001]), (
        'a group with an "lr_scale" (Muon\'s, here 20) gets lr × lr_scale, the others lr: expected '
        f"[0.02, 0.001, 0.001], got {lrs}"
    )
    assert [group.get("lr_scale", 1.0) for group in optimizer.param_groups] == [20.0, 1.0, 1.0], (
        "set_lr must not change a group's lr_scale (the next call multiplies by it again)"
    )


@pytest.mark.todo("3b")
def test_todo_3b_loss_is_the_models_cross_entropy(learner):
    model = tiny_gpt()
    x = torch.randint(0, 32, (3, 16))
    y = torch.randint(0, 32, (3, 16))
    loss, aux_loss = two_losses(learner.train.compute_loss(model, x, y))
    logits = model(x).logits
    expected = F.cross_entropy(logits.view(-1, 32), y.view(-1))
    assert torch.allclose(loss, expected, atol=1e-6), (
        "the LM loss must be the model's cross-entropy against the targets y: read GPT.forward in "
        "model.py to see what it returns when it is given the targets"
    )
    assert loss.requires_grad, "the loss must be differentiable: do not detach it or call .item()"
    assert aux_loss.item() == 0.0, "a model without mixture-of-experts MLPs has no auxiliary loss (0)"


def two_losses(returned):
    """compute_loss's answer, checked to be (LM loss, auxiliary loss): two scalar tensors."""
    assert isinstance(returned, tuple) and len(returned) == 2, (
        f"compute_loss must return two losses, (the LM loss, the auxiliary loss), got "
        f"{type(returned).__name__}{f' of {len(returned)}' if isinstance(returned, tuple) else ''}"
    )
    for what, loss in zip(("LM loss", "auxiliary loss"), returned, strict=True):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0, (
            f"the {what} must be a scalar tensor, got {type(loss).__name__}"
            f"{f' of shape {tuple(loss.shape)}' if isinstance(loss, torch.Tensor) else ''}"
        )
    return returned


@pytest.mark.todo("3b", case="MoE")
def test_todo_3b_the_loss_keeps_every_term_the_model_trains_with(learner):
    """With --use_moe 1 training also minimises the routers' load-balancing loss; a
    cross-entropy computed from the logits alone would drop it, and it must stay apart
    from the LM loss, which evaluation reports."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, use_moe=True))
    x = torch.randint(0, 32, (3, 16))
    y = torch.randint(0, 32, (3, 16))
    y[0, 10:] = IGNORE_INDEX  # padding
    loss, aux_loss = (t.detach() for t in two_losses(learner.train.compute_loss(model, x, y)))
    out, aux = load_balancing_reference(model, x, y)  # the routers' scores of the same batch
    aux = aux.detach()
    real = y != IGNORE_INDEX
    cross_entropy = F.cross_entropy(out.logits[real], y[real]).detach()
    assert torch.allclose(aux_loss, aux, atol=1e-6), (
        f"with mixture-of-experts MLPs the auxiliary loss is the routers' load-balancing term, "
        f"{float(aux):.6f} here; got {float(aux_loss):.6f}. Let the model compute it: it knows "
        "every term it trains with, and which targets are padding"
    )
    added = abs(float(loss - cross_entropy - aux)) < 1e-5
    assert torch.allclose(loss, cross_entropy, atol=1e-6), (
        f"the LM loss is the cross-entropy over the real targets alone, {float(cross_entropy):.6f}; got "
        f"{float(loss):.6f}" + (": the auxiliary loss was added to it; keep the two apart" if added else "")
    )


# --- Reference training loop, written independently of train_solution.py ------------------


def micro_batches(seed, k, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 32, (k * batch, 16), generator=g)
    y = torch.randint(0, 32, (k * batch, 16), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, k * batch, batch)]


def reference_training(model, steps, lrs, grad_clip, scaler, amp_ctx):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.1)
    for step_batches, lr in zip(steps, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for x, y in step_batches:
            with amp_ctx:
                loss = model(x, targets=y).loss
            scaler.scale(loss / len(step_batches)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return model


def learner_training(learner, model, steps, lrs, grad_clip, scaler, amp_ctx):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.1)
    for step_batches, lr in zip(steps, lrs, strict=True):
        learner.train.train_step(model, optimizer, scaler, step_batches, lr, grad_clip, amp_ctx)
    return model


def assert_same_parameters(model, reference, what):
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), (
            f"{what}: after the same steps, {name} differs from the reference training loop "
            f"(largest difference {(p - q).abs().max().item():.2e})"
        )


def scaler_for(dtype):
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=dtype == torch.float16)


def amp_for(dtype):
    return nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


def compare_training(learner, k, grad_clip, dtype, what):
    steps = [micro_batches(seed, k) for seed in range(4)]
    lrs = [3e-3, 2e-3, 1e-3, 5e-4]
    ours = learner_training(
        learner, tiny_gpt(seed=1), steps, lrs, grad_clip, scaler_for(dtype), amp_for(dtype)
    )
    reference = reference_training(tiny_gpt(seed=1), steps, lrs, grad_clip, scaler_for(dtype), amp_for(dtype))
    assert_same_parameters(ours, reference, what)


# --- TODO 3c: clip, then update the weights ---------------------------------------------------


def gradients_ready(scale=None, seed=0):
    """A model with gradients from one backward, scaled as a GradScaler would leave them."""
    model = tiny_gpt(seed=seed)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
    (x, y) = micro_batches(seed, 1, batch=4)[0]
    loss = model(x, targets=y).loss
    scaler.scale(loss).backward()
    return model, scaler


def sgd_update(model, step_fn):
    """Apply step_fn with SGD(lr=1) and return the update; SGD makes any clipping visible."""
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = step_fn(optimizer)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return before - after, optimizer, result


@pytest.mark.todo("3c")
@pytest.mark.parametrize("scale", [None, 2.0**10], ids=["float32", "float16-scaler"])
def test_todo_3c_clips_the_unscaled_gradient_then_steps(learner, scale):
    model, scaler = gradients_ready(scale)
    true_grads = [p.grad.detach().clone() / (scale or 1.0) for p in model.parameters()]
    true_norm = torch.cat([g.flatten() for g in true_grads]).norm()
    clip = 0.05
    assert true_norm > 10 * clip, "test setup: clipping must be active"

    update, optimizer, norm = sgd_update(
        model, lambda opt: learner.train.clip_and_step(model, opt, scaler, clip)
    )
    assert update.abs().max() > 0, (
        "the weights did not change: the function never stepped the optimizer (through the GradScaler)"
    )
    assert all(p.grad is None for p in model.parameters()), (
        "gradients are still there after the step: clear them (set them to None), "
        "or the next step adds new gradients to these old ones"
    )
    update_norm = update.norm().item()
    if scale and update_norm == pytest.approx(clip / scale, rel=1e-3):
        pytest.fail(
            "the gradients were clipped while still multiplied by the GradScaler's factor: "
            "the scaler must divide its factor out of them before they are clipped"
        )
    if update_norm == pytest.approx(true_norm.item(), rel=1e-3):
        pytest.fail(
            f"the gradient norm {true_norm:.3f} was not clipped to grad_clip={clip}: "
            "the gradients' total norm must be cut to grad_clip"
        )
    assert update_norm == pytest.approx(clip, rel=1e-3), (
        f"with grad_clip={clip} the update of SGD(lr=1) should have norm {clip}, got {update_norm:.4g}"
    )
    assert torch.is_tensor(norm) and norm.item() == pytest.approx(true_norm.item(), rel=1e-4), (
        "return the gradient norm before clipping (what the clipping function measures), "
        "of the unscaled gradients"
    )
    if scale:  # after update() the scaler accepts the next step's unscale_
        try:
            scaler.unscale_(optimizer)
        except RuntimeError:
            pytest.fail(
                "the GradScaler's scale never changes: after each optimizer step the scaler must "
                "update its scale (halve it after an overflow, grow it after a run of good steps)"
            )


@pytest.mark.todo("3c")
def test_todo_3c_no_clipping_when_grad_clip_is_zero(learner):
    model, scaler = gradients_ready()
    true_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    update, _, norm = sgd_update(model, lambda opt: learner.train.clip_and_step(model, opt, scaler, 0.0))
    assert update.norm().item() == pytest.approx(true_norm.item(), rel=1e-4), (
        "grad_clip == 0 turns clipping off, but the gradient norm is still measured and returned: "
        "clip to a limit no norm reaches"
    )
    assert norm.item() == pytest.approx(true_norm.item(), rel=1e-4), (
        f"return the gradient norm, {true_norm.item():.5f} here, even when nothing is clipped; "
        f"got {norm.item():.5f}"
    )


@pytest.mark.todo("3c", case="float16")
def test_todo_3c_a_float16_step_whose_gradients_overflowed_is_skipped(learner):
    model, scaler = gradients_ready(2.0**10)
    next(model.parameters()).grad.view(-1)[0] = float("inf")  # float16 overflow in one gradient
    update, _, _ = sgd_update(model, lambda opt: learner.train.clip_and_step(model, opt, scaler, 1.0))
    if not torch.isfinite(update).all() or update.abs().max() > 0:
        pytest.fail(
            "a step whose gradients overflowed (inf) changed the weights "
            f"({'to inf/NaN' if not torch.isfinite(update).all() else 'by a finite amount'}): the "
            "optimizer was stepped directly; stepped through the GradScaler, a step whose gradients "
            "are not finite is skipped"
        )
    assert scaler.get_scale() == 2.0**9, (
        f"after an overflow the GradScaler's scale should halve from {2.0**10:g} to {2.0**9:g}, but it is "
        f"{scaler.get_scale():g}: the scaler must update its scale once after every optimizer step"
    )


@pytest.mark.todo("3c", case="whole training steps")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16-scaler"])
def test_todo_3c_training_matches_the_reference_loop(learner, dtype):
    compare_training(learner, k=1, grad_clip=0.5, dtype=dtype, what="4 steps with clipping active")


# --- TODO 4: gradient accumulation -----------------------------------------------------------


class CountingContext:
    """A stand-in for the autocast context that counts how often it is entered."""

    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False


def accumulated_grads(learner, model, batches, scaler=None, amp_ctx=None):
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    kwargs = {} if amp_ctx is None else {"amp_ctx": amp_ctx}
    returned = learner.train.accumulate_gradients(model, scaler, batches, **kwargs)
    assert all(p.grad is not None for p in model.parameters()), (
        "no gradients after accumulate_gradients: every micro-batch's loss needs a backward pass"
    )
    assert isinstance(returned, tuple) and len(returned) == 3, (
        "accumulate_gradients returns the step's two mean losses and its count of real targets, "
        f"(LM loss, auxiliary loss, count), got {type(returned).__name__}"
    )
    count = returned[2]
    assert isinstance(count, torch.Tensor), (
        f"the count of real targets returned is {type(count).__name__}, not a tensor: the training "
        "loop adds it up on the device without waiting for it. Keep the count of real targets a tensor"
    )
    assert int(count) == real_targets(batches), (
        f"the third value returned is this process's count of real targets in the step, "
        f"{real_targets(batches)} (targets equal to IGNORE_INDEX are padding); got {int(count)}"
    )
    return returned[0], [p.grad.detach().clone() for p in model.parameters()]


def padded_micro_batches(seed, lengths):
    """Micro-batches of padded documents: row r of micro-batch i has lengths[i][r] real
    targets, then -100 (IGNORE_INDEX, padding) up to 16 positions."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for rows in lengths:
        x = torch.randint(0, 32, (len(rows), 16), generator=g)
        y = torch.randint(0, 32, (len(rows), 16), generator=g)
        for row, n in enumerate(rows):
            y[row, n:] = -100
        batches.append((x, y))
    return batches


def real_targets(batches):
    return sum(int((y != -100).sum()) for _, y in batches)


def big_batch_loss(model, batches):
    """The mean cross-entropy over every real target of all the batches, as one batch."""
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    logits = model(x).logits
    real = y != -100
    return F.cross_entropy(logits[real], y[real])


def big_batch_grads(batches):
    model = tiny_gpt(seed=2)
    loss = big_batch_loss(model, batches)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def assert_same_gradients(acc, big, message):
    for a, b in zip(acc, big, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (
            f"{message} (largest difference {(a - b).abs().max().item():.2e})"
        )


@pytest.mark.todo("4")
def test_todo_4_accumulated_gradient_equals_the_big_batch_gradient(learner):
    batches = micro_batches(seed=0, k=4)
    big_loss, big = big_batch_grads(batches)
    loss, acc = accumulated_grads(learner, tiny_gpt(seed=2), batches)
    ratio = (
        torch.cat([g.flatten() for g in acc]).norm() / torch.cat([g.flatten() for g in big]).norm()
    ).item()
    assert ratio != pytest.approx(4.0, rel=1e-3), (
        "the gradients are 4x the big-batch gradient: divide each micro-batch loss before backward, "
        "weighting it by its share of the step's targets (with equal micro-batches, loss / k)"
    )
    assert_same_gradients(
        acc,
        big,
        "4 micro-batches of 2 must give the gradient of one batch of 8: backward each loss weighted "
        "by its share of the step's targets (here 1/k) and let the gradients add up in .grad",
    )
    assert torch.is_tensor(loss) and not loss.requires_grad, (
        "return the mean loss as a tensor detached from the graph (logging it must not keep the graph), "
        f"got {type(loss).__name__}{' that still requires grad' if torch.is_tensor(loss) else ''}"
    )
    assert loss.item() == pytest.approx(big_loss.item(), rel=1e-5), (
        f"the returned loss should be the mean loss per target of the whole step (not divided by k), "
        f"which equals the big-batch loss {big_loss.item():.5f}; got {loss.item():.5f}"
    )


@pytest.mark.todo("4")
def test_todo_4_padded_micro_batches_weigh_every_real_target_the_same(learner):
    lengths = [[16, 12], [3, 1], [9, 5]]  # real targets per row; the rest is padding
    batches = padded_micro_batches(seed=5, lengths=lengths)
    counts = [sum(rows) for rows in lengths]
    big_loss, big = big_batch_grads(batches)
    loss, acc = accumulated_grads(learner, tiny_gpt(seed=2), batches)
    assert_same_gradients(
        acc,
        big,
        f"with padded documents the micro-batches hold {counts} real targets: the gradient must be "
        f"that of the mean loss over all {sum(counts)}, as in one big batch, so weight each "
        f"micro-batch's mean loss by its count / {sum(counts)}, not by 1/k",
    )
    assert loss.item() == pytest.approx(big_loss.item(), rel=1e-5), (
        f"return the mean loss per real target of the whole step, {big_loss.item():.5f} "
        f"(each micro-batch's mean weighted by its count of real targets); got {loss.item():.5f}"
    )


@pytest.mark.todo("4", case="float16")
def test_todo_4_backward_goes_through_the_scaler_under_amp(learner):
    batches = micro_batches(seed=1, k=2)
    _, big = big_batch_grads(batches)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    amp_ctx = CountingContext()
    _, acc = accumulated_grads(learner, tiny_gpt(seed=2), batches, scaler, amp_ctx)
    assert amp_ctx.entered == 2, (
        f"the forward of each micro-batch must run inside the amp_ctx it is given; "
        f"it was entered {amp_ctx.entered} times for 2 micro-batches"
    )
    for a, b in zip(acc, big, strict=True):
        assert torch.allclose(a, b * 2.0**8, atol=1e-4, rtol=1e-4), (
            "the backward must start from the loss multiplied by the GradScaler's factor, "
            "so float16 gradients do not underflow"
        )


class FakeDDP(torch.nn.Module):
    """Looks like DistributedDataParallel to the code under test: it has no_sync()."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.syncing = True
        self.backward_synced = []
        next(module.parameters()).register_hook(self._record)

    def _record(self, grad):
        self.backward_synced.append(self.syncing)
        return grad

    def forward(self, idx, targets=None):
        return self.module(idx, targets=targets)

    @contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


@pytest.mark.todo("4", case="DDP")
def test_todo_4_skips_the_all_reduce_on_all_but_the_last_micro_batch(learner):
    model = FakeDDP(tiny_gpt())
    accumulated_grads(learner, model, micro_batches(seed=2, k=3))
    assert model.backward_synced == [False, False, True], (
        "under DDP, run every micro-batch but the last inside the model's context that skips the "
        "gradient all-reduce, so gradients are "
        f"averaged across processes once per step; synced backwards were {model.backward_synced}"
    )


@pytest.mark.todo("4", case="DDP")
def test_todo_4_ddp_processes_divide_by_the_mean_count(learner, monkeypatch):
    """Two DDP processes, simulated one after the other: their micro-batches hold
    different numbers of real targets, and DDP averages their two gradients."""
    mine = padded_micro_batches(seed=6, lengths=[[16, 12], [3, 1]])
    theirs = padded_micro_batches(seed=7, lengths=[[2, 2], [5, 1]])
    _, big = big_batch_grads(mine + theirs)
    all_reduced, grads, losses = [], [], []
    for own, other in ((mine, theirs), (theirs, mine)):

        def mean_of_two_processes(value, other=other):  # what the all-reduce would return
            all_reduced.append(value)
            return (value + real_targets(other)) / 2

        monkeypatch.setattr(learner.train, "mean_over_processes", mean_of_two_processes)
        loss, process_grads = accumulated_grads(learner, tiny_gpt(seed=2), own)
        grads.append(process_grads)
        losses.append((loss, big_batch_loss(tiny_gpt(seed=2), own).detach(), real_targets(own)))
    averaged = [(a + b) / 2 for a, b in zip(*grads, strict=True)]  # what DDP's all-reduce does
    assert all_reduced, (
        "under DDP the count of real targets must be shared between processes: each divided by its "
        "own count, so its targets weigh more or less than the other process's. Divide by the mean "
        "count of a process (the helper for it is in this file)"
    )
    assert all(isinstance(value, torch.Tensor) for value in all_reduced), (
        f"mean_over_processes was given {type(all_reduced[0]).__name__}, not a tensor: an all-reduce "
        "sends tensors between processes, so a real torchrun run fails there. Keep the count of real "
        "targets a tensor"
    )
    for loss, expected, count in losses:
        assert isinstance(loss, torch.Tensor) and torch.allclose(loss, expected, atol=1e-5), (
            f"under DDP the returned loss is still this process's own mean loss per real target "
            f"(its {count} targets: {expected.item():.5f}), got {float(loss):.5f}: the mean count of a "
            "process weights the backward, not the loss this process reports"
        )
    assert_same_gradients(
        averaged,
        big,
        f"two processes with {real_targets(mine)} and {real_targets(theirs)} real targets: after DDP "
        "averages their gradients, every target of both must weigh the same: divide by the mean "
        "count of a process, not by this process's own count",
    )


@pytest.mark.todo("4", case="MoE")
def test_todo_4_the_objective_holds_the_auxiliary_loss(learner):
    """With --use_moe 1 each micro-batch backwards its LM loss plus its routers'
    load-balancing loss, both weighted by its share of the step's real targets."""
    batches = padded_micro_batches(seed=9, lengths=[[16, 12], [3, 1]])
    counts = [int((y != IGNORE_INDEX).sum()) for _, y in batches]
    reference = moe_gpt()
    aux_sum = 0.0
    for x, y in batches:
        out, aux = load_balancing_reference(reference, x, y)
        (((out.loss + aux) * (y != IGNORE_INDEX).sum()) / sum(counts)).backward()
        aux_sum += aux.item() * int((y != IGNORE_INDEX).sum())
    model = moe_gpt()
    returned = learner.train.accumulate_gradients(model, torch.amp.GradScaler("cpu", enabled=False), batches)
    assert isinstance(returned, tuple) and len(returned) == 3, (
        "accumulate_gradients returns the step's two mean losses and its count of real targets, "
        "(LM loss, auxiliary loss, count)"
    )
    assert_same_gradients(
        [p.grad for p in model.parameters()],
        [p.grad for p in reference.parameters()],
        "with mixture-of-experts MLPs the objective is the LM loss plus the auxiliary loss: backward "
        "their sum, weighted by the micro-batch's count of real targets over the step's",
    )
    assert float(returned[1]) == pytest.approx(aux_sum / sum(counts), rel=1e-5), (
        f"the returned auxiliary loss is its mean per real target of the step, {aux_sum / sum(counts):.6f} "
        f"(weighted like the LM loss); got {float(returned[1]):.6f}"
    )


def moe_gpt():
    torch.manual_seed(3)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, use_moe=True))


@pytest.mark.todo("4", case="whole training steps")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16-scaler"])
def test_todo_4_training_with_accumulation_matches_the_reference_loop(learner, dtype):
    compare_training(learner, k=3, grad_clip=0.5, dtype=dtype, what="4 steps of 3 micro-batches")


# --- TODO 5: mixed precision ----------------------------------------------------------------


@pytest.mark.todo("5")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_todo_5_autocast_runs_matmuls_in_the_16_bit_type(learner, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an autocast for CUDA on a machine without it warns
        ctx = learner.train.autocast_context(torch.device("cpu"), dtype)
    other_device = getattr(ctx, "device", "cpu")
    assert other_device == "cpu", (
        f"asked for the CPU, the context turns mixed precision on for {other_device!r}: the CPU's "
        "matmuls stay in float32. Take the device type from the device autocast_context is given"
    )
    with ctx:
        assert torch.is_autocast_enabled("cpu"), (
            f"with {dtype} the matmuls inside the context must run in {dtype} (mixed precision), but "
            "autocast is off inside it"
        )
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == dtype, f"under the context a Linear layer should compute in {dtype}, got {out.dtype}"


@pytest.mark.todo("5")
def test_todo_5_float32_means_no_autocast(learner):
    with learner.train.autocast_context(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu"), (
            "float32 needs no autocast, but autocast is on inside the context"
        )
        dtype = torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype
        assert dtype == torch.float32, f"with float32, a Linear layer must compute in float32, got {dtype}"


@pytest.mark.todo("5")
def test_todo_5_autocast_follows_the_device(learner):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": we only look at the settings
        ctx = learner.train.autocast_context(torch.device("cuda"), torch.bfloat16)
    assert getattr(ctx, "device", None) == "cuda", (
        "the context must take its device type from the device it is given"
    )


@pytest.mark.todo("5")
def test_todo_5_grad_scaler_only_for_float16(learner):
    for dtype, wanted in [(torch.float16, True), (torch.bfloat16, False), (torch.float32, False)]:
        scaler = learner.train.make_grad_scaler(torch.device("cpu"), dtype)
        assert isinstance(scaler, torch.amp.GradScaler), (
            f"make_grad_scaler must return a torch.amp.GradScaler, got {type(scaler).__name__}"
        )
        assert scaler.is_enabled() == wanted, (
            f"{dtype}: the scaler must be {'enabled' if wanted else 'disabled'}: float16's small range "
            "needs loss scaling, bfloat16 has float32's range and does not"
        )


@pytest.mark.todo("5", case="whole training steps")
def test_todo_5_float16_training_matches_the_reference_loop(learner):
    device = torch.device("cpu")
    scaler = learner.train.make_grad_scaler(device, torch.float16)
    amp_ctx = learner.train.autocast_context(device, torch.float16)
    steps = [micro_batches(seed, 2) for seed in range(3)]
    lrs = [2e-3, 1e-3, 5e-4]
    ours = learner_training(learner, tiny_gpt(seed=4), steps, lrs, 1.0, scaler, amp_ctx)
    reference = reference_training(
        tiny_gpt(seed=4),
        steps,
        lrs,
        1.0,
        torch.amp.GradScaler("cpu"),
        torch.autocast("cpu", dtype=torch.float16),
    )
    assert_same_parameters(ours, reference, "3 float16 steps with a GradScaler")


# --- TODO 6: evaluation -----------------------------------------------------------------------


def eval_batches():
    return [micro_batches(seed, 1, batch=3)[0] for seed in range(3)]


@pytest.mark.todo("6")
def test_todo_6_mean_loss_and_perplexity(learner):
    model = tiny_gpt()
    batches = eval_batches()
    result = learner.train.evaluate(model, batches)
    with torch.no_grad():
        model.eval()
        expected = sum(model(x, targets=y).loss.item() for x, y in batches) / len(batches)
    assert isinstance(result.loss, float), (
        f"EvalResult.loss must be a Python float, got {type(result.loss).__name__}: "
        "turn the 0-d tensor into a Python number"
    )
    assert result.loss == pytest.approx(expected, rel=1e-5), (
        f"the loss must be the mean over all the batches: expected {expected:.4f}, got {result.loss:.4f}"
    )
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5), (
        f"the perplexity must be exp(mean loss) = {math.exp(expected):.4f}, got {result.perplexity:.4f}"
    )


@pytest.mark.todo("6")
def test_todo_6_padded_batches_weigh_every_real_target_the_same(learner):
    model = tiny_gpt()
    batches = padded_micro_batches(seed=8, lengths=[[16, 16, 14], [2, 1, 1]])
    result = learner.train.evaluate(model, batches)
    model.eval()
    with torch.no_grad():
        expected = big_batch_loss(model, batches).item()
        mean_of_means = sum(model(x, targets=y).loss.item() for x, y in batches) / len(batches)
    assert result.loss == pytest.approx(expected, rel=1e-5), (
        f"with padded documents the batches hold {real_targets(batches[:1])} and "
        f"{real_targets(batches[1:])} real targets: the loss must be the mean over all of them, "
        f"{expected:.4f} (each batch's mean weighted by its count of real targets), not the mean of "
        f"the batch means, {mean_of_means:.4f}; got {result.loss:.4f}"
    )


@pytest.mark.todo("6")
def test_todo_6_dropout_off_and_train_mode_restored(learner):
    model = tiny_gpt(dropout=0.5)
    model.train()
    batches = eval_batches()
    first = learner.train.evaluate(model, batches).loss
    assert model.training, "the model was left in evaluation mode: put it back in training mode at the end"
    second = learner.train.evaluate(copy.deepcopy(model), batches).loss
    assert first == second, "two evaluations differ: dropout was on; switch the model to evaluation mode"


@pytest.mark.todo("6")
def test_todo_6_no_graph_and_amp_context(learner):
    model = tiny_gpt()
    grad_enabled = []
    model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    amp_ctx = CountingContext()
    learner.train.evaluate(model, eval_batches(), amp_ctx)
    assert grad_enabled and not any(grad_enabled), (
        "the evaluation built an autograd graph: no backward will follow, so turn gradient tracking "
        "off while evaluating; the graph only wastes memory"
    )
    assert amp_ctx.entered, "run the forward passes under amp_ctx, as in training"


class UnmatchedAllReduce(Exception):
    """A process called sum_over_processes more times than another."""


class ThreadedProcesses:
    """Processes stood in for by threads, each with its own copy of the model, for
    evaluate: sum_over_processes becomes a real all-reduce among the threads (each call
    waits until every thread has made its own, as torch.distributed does), so the test
    holds however the code packs what it sums."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.own = threading.local()  # this thread's rank and count of calls
        self.arrived = threading.Condition()
        self.deposits: dict[tuple[int, int], torch.Tensor] = {}  # (call, rank) -> value
        self.calls_when_done: dict[int, int] = {}  # rank -> its number of calls, once it is done
        self.handed: list[object] = []

    def sum_over_processes(self, value):
        self.handed.append(value)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"sum_over_processes was given {type(value).__name__}, not a tensor")
        call = self.own.calls = self.own.calls + 1
        with self.arrived:
            self.deposits[(call, self.own.rank)] = value.detach().clone()
            self.arrived.notify_all()
            everyone = lambda: all((call, rank) in self.deposits for rank in range(self.n))
            abandoned = lambda: any(calls < call for calls in self.calls_when_done.values())
            # A safety net only: the wait ends as soon as every thread has called, or one is done.
            self.arrived.wait_for(lambda: everyone() or abandoned(), timeout=120)
            if not everyone():
                raise UnmatchedAllReduce
        return sum(self.deposits[(call, rank)] for rank in range(self.n))

    def evaluate(self, learner, monkeypatch, model, shares) -> list:
        """learner's evaluate on every share at once, one thread per share: the results."""
        monkeypatch.setattr(learner.train, "sum_over_processes", self.sum_over_processes)
        results, errors = [None] * len(shares), []

        def process(rank):
            self.own.rank, self.own.calls = rank, 0
            try:
                results[rank] = learner.train.evaluate(copy.deepcopy(model), shares[rank])
            except Exception as err:  # reported below, in the test's own thread
                errors.append(err)
            with self.arrived:
                self.calls_when_done[rank] = self.own.calls
                self.arrived.notify_all()

        threads = [threading.Thread(target=process, args=(rank,)) for rank in range(len(shares))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        mistakes = [err for err in errors if not isinstance(err, UnmatchedAllReduce)]
        if mistakes:
            raise mistakes[0]
        if errors:
            pytest.fail(
                "the processes called sum_over_processes a different number of times, so one waited "
                "for an all-reduce the others never joined: call it the same number of times on every "
                "process (once is enough)"
            )
        return results


@pytest.mark.todo("6", case="DDP")
def test_todo_6_every_process_s_windows_weigh_the_same(learner, monkeypatch):
    """Two processes, each with its share of the validation windows: both must report
    the mean over the windows of both, each real target weighing the same."""
    model = tiny_gpt()
    shares = [
        padded_micro_batches(seed=8, lengths=[[16, 16, 14], [16, 9, 16]]),
        padded_micro_batches(seed=9, lengths=[[2, 1, 1], [3, 4, 1]]),
    ]
    processes = ThreadedProcesses(len(shares))
    results = processes.evaluate(learner, monkeypatch, model, shares)
    model.eval()
    with torch.no_grad():
        expected = big_batch_loss(model, shares[0] + shares[1]).item()
        own = [big_batch_loss(model, share).item() for share in shares]
    assert processes.handed, (
        "each process evaluated only its own share of the windows: the loss must be the mean over "
        "every process's windows, so add up what the processes measured with sum_over_processes: "
        "it is imported at the top, and every process calls it"
    )
    for rank, result in enumerate(results):
        if result.loss == pytest.approx(own[rank], rel=1e-5):
            pytest.fail(
                f"process {rank} reported the mean over its own windows, {own[rank]:.4f}, not over every "
                f"process's, {expected:.4f}: add up the loss sums and the real-target counts of all the "
                "processes, then divide"
            )
        if result.loss == pytest.approx(sum(own) / len(own), rel=1e-5):
            pytest.fail(
                f"the processes hold {real_targets(shares[0])} and {real_targets(shares[1])} real targets: "
                f"the mean of their two means, {sum(own) / len(own):.4f}, weighs the few as much as the "
                f"many. Add up the loss sums and the counts over the processes, then divide: {expected:.4f}"
            )
        assert result.loss == pytest.approx(expected, rel=1e-5), (
            f"process {rank}: the mean loss over every real target of both processes is {expected:.4f}, "
            f"got {result.loss:.4f}"
        )


# --- TODO 8: checkpoints for an exact resume --------------------------------------------------


def trained_state(learner, seed=0):
    """A tiny model, AdamW and an enabled GradScaler after two real steps, and a batch stream."""
    import numpy as np

    from course.batches import BatchStream
    from data_solution import BlockDataset

    torch.manual_seed(seed)
    model = tiny_gpt(seed=seed, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    stream = BatchStream(BlockDataset(np.arange(2000, dtype=np.uint16) % 32, 16), 4, seed=seed)
    for _ in range(2):
        learner.train.train_step(model, optimizer, scaler, [next(stream)], 1e-3, 1.0)
    return model, optimizer, scaler, stream


@pytest.mark.todo("8")
def test_todo_8_restore_brings_back_every_piece_of_the_state(learner):
    model, optimizer, scaler, stream = trained_state(learner, seed=0)
    scaler.update(new_scale=2.0**5)  # as after overflows: a fresh scaler would start at another scale
    state = learner.train.checkpoint_state(model, optimizer, scaler, 2, stream, 3.25)
    expected_next_random = torch.rand(3)  # what the generator gives right after the save
    assert isinstance(state, dict), (
        f"checkpoint_state must return a dict (torch.save writes it to disk), got {type(state).__name__}"
    )

    fresh_model, fresh_optimizer, fresh_scaler, _ = trained_state(learner, seed=1)
    torch.manual_seed(999)
    step, position, best = learner.train.restore_checkpoint(state, fresh_model, fresh_optimizer, fresh_scaler)

    assert torch.equal(torch.rand(3), expected_next_random), (
        "the random generators must be saved and restored (this file has helpers for both): "
        "they decide the next dropout masks"
    )
    for (name, p), q in zip(fresh_model.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q), f"the model weights must be restored; {name} differs"
    saved_moments = optimizer.state_dict()["state"]
    restored_moments = fresh_optimizer.state_dict()["state"]
    assert all(
        torch.equal(saved_moments[k]["exp_avg"], restored_moments[k]["exp_avg"]) for k in saved_moments
    ), "the optimizer state must be restored: Adam's moment estimates are part of the training state"
    assert fresh_scaler.state_dict() == scaler.state_dict(), (
        f"the GradScaler's state must be saved and restored too: its scale should be {scaler.get_scale():g} "
        f"again, got {fresh_scaler.get_scale():g}; without it a float16 run resumes with another loss scale"
    )
    assert step == 2, f"restore_checkpoint must return the saved step (2), got {step}"
    assert position == stream.state(), (
        f"restore_checkpoint must return the saved data position {stream.state()}, got {position}"
    )
    assert best == 3.25, f"restore_checkpoint must return the saved best_val_loss (3.25), got {best}"


@pytest.mark.todo("8", case="whole training runs")
def test_todo_8_resumed_run_matches_the_uninterrupted_run(learner, tmp_path):
    import json

    from conftest import VERSE

    model, optimizer, scaler, stream = trained_state(learner)
    learner.train.checkpoint_state(
        model, optimizer, scaler, 0, stream, 0.0
    )  # an open TODO 8 stops here, fast
    corpus = tmp_path / "verse.txt"
    corpus.write_text(VERSE * 40)
    args = ["--data_path", str(corpus), "--data_dir", str(tmp_path / "prepared"), "--device", "cpu",
            "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
            "--max_seq_len", "16",
            "--batch_size", "4", "--accumulation_steps", "2", "--dropout", "0.1", "--max_steps", "8",
            "--save_interval", "3", "--eval_interval", "4", "--eval_iters", "2", "--log_interval", "1",
            "--sample_tokens", "5"]  # fmt: skip

    def losses(out):
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    assert learner.train.main([*args, "--save_dir", str(tmp_path / "straight")]) == 0

    class Crash(Exception):
        pass

    real_save = run_folder.RunFolder.save_checkpoint

    def save_then_crash(run, model, optimizer, state, group):
        real_save(run, model, optimizer, state, group)
        if state is not None and state.get("step") == 3:
            raise Crash  # as if the run were killed right after the checkpoint of step 3

    run_folder.RunFolder.save_checkpoint = save_then_crash
    try:
        with pytest.raises(Crash):
            learner.train.main([*args, "--save_dir", str(tmp_path / "resumed")])
    finally:
        run_folder.RunFolder.save_checkpoint = real_save
    assert learner.train.main([*args, "--save_dir", str(tmp_path / "resumed"), "--from_resume", "1"]) == 0

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    for step in sorted(straight):
        assert resumed.get(step) == straight[step], (
            f"after resuming from the checkpoint of step 3, the loss at step {step} is {resumed.get(step)} "
            f"but the uninterrupted run had {straight[step]}: save and restore the model, optimizer, scaler, "
            "step, data position and random states, so the resumed run is the same run"
        )
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the final weights must be identical, bit for bit"
