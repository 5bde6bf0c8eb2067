"""The TODOs of the exercise files, their hints and their challenge texts, in one place.

`python train_exercise.py --hint 2b` (or `python data_exercise.py --hint 1`) prints the
next hint of a TODO, one layer at a time: first the idea, then the concepts and the
API names, and only last the pseudocode. The tutorial notebook shows the same texts.
How many hints each TODO took is kept in .hints_used.json (not part of the course
files) and shown on the scoreboard.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

HINTS_USED_FILE = Path(__file__).resolve().parent.parent / ".hints_used.json"


@dataclass(frozen=True)
class Todo:
    id: str
    module: str  # "data" or "train": the exercise file it is in
    functions: tuple[str, ...]  # attribute paths in that module that hold its code
    title: str
    bonus: bool = False  # shown on the scoreboard, but not needed to finish the file


CATALOG = [
    Todo("1", "data", ("BlockDataset.__getitem__",), "BlockDataset.__getitem__: x and the shifted y"),
    Todo("2a", "train", ("get_lr",), "get_lr: linear warmup"),
    Todo("2b", "train", ("get_lr",), "get_lr: cosine decay to min_lr"),
    Todo("3a", "train", ("set_lr",), "set_lr: the LR of every param group"),
    Todo("3b", "train", ("compute_loss",), "compute_loss: the forward pass"),
    Todo("3c", "train", ("clip_and_step",), "clip_and_step: clip, then update the weights"),
    Todo("4", "train", ("accumulate_gradients",), "accumulate_gradients: token-weighted, no_sync"),
    Todo("5", "train", ("autocast_context", "make_grad_scaler"), "autocast_context + make_grad_scaler"),
    Todo("6", "train", ("evaluate",), "evaluate: mean loss over every process"),
    Todo(
        "7", "data", ("PretrainDataset.__getitem__",), "PretrainDataset: BOS/EOS, padding, -100", bonus=True
    ),
    Todo(
        "8", "train", ("checkpoint_state", "restore_checkpoint"), "checkpoint_state / restore: exact resume"
    ),
]
TODOS = {todo.id: todo for todo in CATALOG}

# Three layers per TODO: the idea, the concepts and API names, the pseudocode.
HINTS: dict[str, tuple[str, str, str]] = {
    "1": (
        "A window of T + 1 consecutive tokens holds T training examples: at every position, "
        "the tokens so far and the one that comes next. x is what the model reads, y what it "
        "must predict at each position.",
        "NumPy slicing: tokens[a:b] holds b - a tokens, the one at b excluded. The token file "
        "holds uint16; embedding lookups and cross_entropy want int64: array.astype(np.int64), "
        "then torch.from_numpy(...).",
        "x = the T tokens from s on; y = the T tokens from s + 1 on (one further); convert "
        "both to int64 tensors; return x, y.",
    ),
    "2a": (
        "Warmup grows the LR in equal steps so that the last warmup step reaches max_lr. Count "
        "the steps done from 1, not 0: at step 0 the LR must already be above zero, or the "
        "first step learns nothing.",
        "A linear ramp: a fraction of max_lr, (steps done including this one) / warmup_steps.",
        "return max_lr * (step + 1) / warmup_steps",
    ),
    "2b": (
        "Measure how far through the decay a step is, as a number from 0 (at warmup_steps) to "
        "1 (at total_steps). Half a cosine turns that number into a factor that falls smoothly "
        "from 1 to 0; the LR is min_lr plus that factor times the gap to max_lr.",
        "progress = (step - warmup_steps) / (total_steps - warmup_steps); "
        "0.5 * (1 + math.cos(math.pi * progress)) goes from 1 to 0. From total_steps on, return "
        "min_lr without computing the cosine (past 1 it would rise again).",
        "if step >= total_steps: return min_lr\n"
        "progress = (step - warmup_steps) / (total_steps - warmup_steps)\n"
        "return min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress))",
    ),
    "3a": (
        "An optimizer does not read one global learning rate: each parameter group (optim.py "
        "makes one with weight decay and one without, and one for Muon) carries its own "
        "settings. Muon's group needs a larger LR, so it carries a scale for the schedule's LR.",
        "optimizer.param_groups is a list of dicts; the key 'lr' is the learning rate of that "
        "group; group.get('lr_scale', 1.0) is its scale (1 where it has none).",
        "for each group in optimizer.param_groups: set group['lr'] to lr × the group's lr_scale",
    ),
    "3b": (
        "The model computes its losses itself when you give it the targets; you only call it. "
        "There are two: the language-model loss, which evaluation reports, and the auxiliary "
        "loss that only mixture-of-experts routers train with.",
        "GPT.forward(idx, targets=None) in model.py returns a GPTOutput (logits, loss, aux_loss) "
        "that unpacks like a tuple; loss is the mean cross-entropy over the real targets, in nats "
        "per token; aux_loss is a zero tensor without MoE.",
        "logits, lm_loss, aux_loss = model(x, targets=y); return lm_loss, aux_loss",
    ),
    "3c": (
        "Order matters. The gradients must be in true units before you measure and clip them "
        "(float16 gradients are still multiplied by the scaler's factor); only then take the "
        "step; then forget the gradients so that the next step starts from zero.",
        "scaler.unscale_(optimizer); torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) "
        "returns the norm before clipping (max_norm = float('inf') when grad_clip is 0); "
        "scaler.step(optimizer), not optimizer.step(): the scaler skips a step whose gradients "
        "overflowed; scaler.update(); optimizer.zero_grad(set_to_none=True).",
        "unscale; norm = clip(parameters, grad_clip or inf); scaler.step(optimizer); "
        "scaler.update(); zero_grad(set_to_none=True); return norm.detach()",
    ),
    "4": (
        "backward() adds into .grad instead of replacing it, so backward passes of weighted "
        "micro-batch losses add up to the gradient of the whole step. Each loss is a mean over "
        "its own real targets (padding excluded). With packed blocks every micro-batch has the "
        "same count and the weight is 1/k; with padded documents the counts differ, so weight "
        "each micro-batch by (its count) / (the step's count): then every real target weighs "
        "the same, as in one big batch.",
        "(y != IGNORE_INDEX).sum() counts the real targets; loss * count is a micro-batch's sum "
        "of losses. DDP averages the processes' gradients, so divide by "
        "mean_over_processes(the step's count), the mean count of a process, not by your own "
        "count. The objective is lm_loss + aux_loss (compute_loss gives both). Forward under "
        "`with amp_ctx:`; scaler.scale(...).backward(); under DDP (hasattr(model, 'no_sync')) "
        "wrap every micro-batch but the last in `with model.no_sync():`; the returned losses "
        "are detached.",
        "counts = [real targets of y for each micro-batch]\n"
        "per_process = mean_over_processes(sum(counts))\n"
        "for i, ((x, y), count) in enumerate(zip(micro_batches, counts)):\n"
        "    with (model.no_sync() if DDP and not the last else nullcontext()):\n"
        "        with amp_ctx: lm_loss, aux_loss = compute_loss(model, x, y)\n"
        "        scaler.scale((lm_loss + aux_loss) * count / per_process).backward()\n"
        "    add lm_loss.detach() * count and aux_loss.detach() * count to two running sums\n"
        "return each running sum / sum(counts)",
    ),
    "5": (
        "Autocast runs the matmuls in a 16-bit type and keeps the sensitive ops in float32. "
        "Only float16 has a range small enough that tiny gradients vanish, so only float16 "
        "needs a GradScaler.",
        "torch.autocast(device_type=device.type, dtype=dtype); NO_AUTOCAST for float32; "
        "torch.amp.GradScaler(device.type, enabled=...).",
        "autocast_context: return NO_AUTOCAST if dtype is float32, else "
        "torch.autocast(device_type=device.type, dtype=dtype)\n"
        "make_grad_scaler: return torch.amp.GradScaler(device.type, enabled=(dtype is float16))",
    ),
    "6": (
        "Evaluation must measure the model, not the noise: dropout off, and no autograd graph "
        "(nothing will call backward). The model must train normally again afterwards. The "
        "loss is a mean over every real target: with padded documents a batch with few real "
        "targets must not count as much as a full one. Under torchrun each process reads its "
        "own share of the validation windows, so a mean needs the sums of every process: add "
        "up losses and counts first, share them, divide last.",
        "model.eval() and model.train(); `with torch.no_grad(), amp_ctx:`; compute_loss gives "
        "each batch's mean LM loss first (the auxiliary loss is a training aid, not reported); "
        "(y != IGNORE_INDEX).sum() counts a batch's real targets, and a mean times its count is "
        "a sum; sum_over_processes(tensor) is an all-reduce (torch.stack packs two numbers into "
        "one tensor, one call); .item() turns a one-element tensor into a Python float; a tensor's "
        ".exp() (a diverged model's huge loss gives inf, where math.exp raises OverflowError).",
        "model.eval()\n"
        "with no_grad and amp_ctx: losses = [the LM loss of compute_loss(model, x, y) for each batch]\n"
        "model.train()\n"
        "counts = [real targets of y for each batch]\n"
        "totals = sum_over_processes(stack([sum(loss * count), sum(counts)]))\n"
        "loss = totals[0] / totals[1]; return EvalResult(loss as a float, loss.exp() as a float)",
    ),
    "7": (
        "MiniMind trains on one document per sequence: BOS marks its start, EOS its end. A "
        "long document is cut; a short one is padded to the fixed length, and the padded "
        "targets are marked so that the loss ignores them.",
        "A Python list: [bos] + ids + [eos], sliced to its first T + 1 tokens; "
        "torch.full((T,), value, dtype=torch.long) makes a tensor to fill; IGNORE_INDEX (-100) "
        "is the target cross_entropy skips.",
        "tokens = ([bos] + ids + [eos])[:T + 1]; n = len(tokens) - 1\n"
        "x = full(T, pad); y = full(T, IGNORE_INDEX)\n"
        "x[:n] = tokens[:-1]; y[:n] = tokens[1:]; return x, y",
    ),
    "8": (
        "The weights alone do not continue a run. List everything that decides what happens "
        "next: the weights, Adam's moving averages, the GradScaler's scale, where the LR "
        "schedule is, which batch comes next, and the random generators (dropout).",
        "state_dict() / load_state_dict() on the model, the optimizer and the scaler, under the "
        "keys the run's files read ('model', 'optimizer', 'scaler', 'step'); stream.state() is "
        "the data position, which train() hands back to stream.seek(**position); "
        "capture_rng_state() / restore_rng_state() from course/checkpoints.py.",
        "checkpoint_state: return a dict of model/optimizer/scaler state_dicts, step, "
        "stream.state(), capture_rng_state(), best_val_loss\n"
        "restore_checkpoint: load each state_dict back, restore_rng_state(...), "
        "return step, data position, best_val_loss",
    ),
}
LAYERS = ("the idea", "concepts and API names", "pseudocode")

# The challenge level (`python tools/make_exercises.py --level challenge`): in place of the
# guided contract, each TODO region states its goal and every graded property in words,
# what must hold and why, with no code, slice, formula or API name; the hints above hold
# the rest. One text per region of the TODO, in the order of the solution file.
CHALLENGE: dict[str, tuple[str, ...]] = {
    "1": (
        "Return the training pair of window idx, which begins where the windows' spacing "
        "(stride) puts it: x, the T tokens of the corpus that the model reads from there on, and "
        "y, what it must predict at each of x's positions, the token that comes next in the "
        "corpus. Both are tensors of T 64-bit integers, the type embedding lookups and the loss "
        "take (the token file's own type is too small for them), also when the tokens come from a "
        "memory-mapped file.",
    ),
    "2a": (
        "During the warmup (step below warmup_steps) the LR climbs in a straight line, by the "
        "same amount at every step, from 0 just before the first step to max_lr at the last step "
        "of the warmup: the very first step must already move the weights.",
    ),
    "2b": (
        "After the warmup the LR falls from max_lr, where the decay starts, to min_lr at "
        "total_steps along half a cosine period: slowly at first, fastest midway, slowly at the "
        "end. From total_steps on, however far past it, the LR stays at min_lr; it never goes "
        "below it.",
    ),
    "3a": (
        "The optimizer's next step must train every parameter at the schedule's lr, except that "
        'a group of parameters carrying an "lr_scale" (Muon\'s) trains at that multiple of lr; a '
        "group without one takes lr itself. Nothing else about any group changes, its scale "
        "included, so the next call scales the new lr again.",
    ),
    "3b": (
        "Return the two losses of predicting y from x, each a scalar still attached to the "
        "autograd graph (backward follows): the language-model loss, the mean cross-entropy over "
        "the real targets (padding is no target) in nats per token, and the auxiliary "
        "load-balancing loss of mixture-of-experts routers, zero without them. Keep the two "
        "apart: evaluation reports the first alone. The model knows every term it trains with.",
    ),
    "3c": (
        "Return the norm of the whole gradient before clipping, in true units. The weights move "
        "by the true gradient, shortened to a total norm of grad_clip when it is longer (0: never "
        "shortened), also when float16's loss scaling has multiplied the gradients by its factor. "
        "A float16 step whose gradients overflowed leaves the weights as they were, and the loss "
        "scale adapts after every step (it halves after an overflow). Afterwards the gradients "
        "are gone (None, not zeros), so the next step starts from nothing. Order matters.",
    ),
    "4": (
        "Forward and backward every micro-batch so that afterwards the gradients are those of "
        "one batch holding all of them: the gradient of the training objective (the LM loss plus "
        "the auxiliary loss) averaged over every real target of the step, each weighing the same "
        "whichever micro-batch holds it, also when micro-batches hold different numbers of real "
        "targets (padding). Under DDP the processes' gradients are averaged once per step, at the "
        "last micro-batch only, and afterwards every real target of every process weighs the "
        "same: the count that weighs them is shared through the helper imported at the top, as a "
        "tensor. Forwards run under amp_ctx, and backwards start from the loss as the scaler "
        "scales it. Return this process's mean LM loss and mean auxiliary loss per real target "
        "of the step, detached from the graph.",
    ),
    "5": (
        "Return a context under which, for bfloat16 or float16, the matrix multiplications run "
        "in that 16-bit type on the kind of device given (CPU, CUDA or MPS), and only there; for "
        "float32, a context that changes nothing.",
        "Return the loss scaler (the type the signature names) for this kind of device, switched "
        "on only for the number type whose narrow range makes small gradients vanish, and off "
        "for the other two (the docstring says why). The training step always calls it: "
        "switched off, it passes everything through.",
    ),
    "6": (
        "Measure the model as it is: return its mean LM loss over every real target of every "
        "process's batches (padding excluded, so a batch with few real targets weighs only as "
        "much as its targets), as a Python float, and the perplexity, its exponential. Every "
        "process gets the same loss over all the processes' windows, adding up through the "
        "helper imported at the top, called as often on every process. Measuring changes "
        "nothing: dropout off while it runs and training mode back afterwards, no autograd graph "
        "(no backward follows), forwards under amp_ctx as in training.",
    ),
    "7": (
        "Return document idx as a pair of tensors of T 64-bit integers: the sequence is the "
        "begin marker, the document's tokens and the end marker, cut to one token more than T "
        "when it is longer (a cut document loses its end: it did not end there); x reads it and "
        "y holds the next token at each of x's positions. Past the sequence x is padding (pad) "
        "and y holds the target value the loss skips (IGNORE_INDEX).",
    ),
    "8": (
        "Return a dict from which restore_checkpoint continues the run exactly as if it had "
        "never stopped: the same weights, the optimizer's moment estimates, the loss scaler's "
        "current scale, the step, the position in the data, every random generator (they decide "
        "the next dropout masks) and best_val_loss. The run's checkpoint files read the model's, "
        'the optimizer\'s and the scaler\'s states under "model", "optimizer" and "scaler", and '
        "the step under \"step\"; the docstring names the stream's and the generators' helpers.",
        "Give the model, the optimizer, the scaler and the random generators back their saved "
        "states, and return the step, the data position (as the stream gave it) and "
        "best_val_loss, as they were saved.",
    ),
}


def hints_used(path: Path | None = None) -> dict[str, int]:
    """How many hints each TODO has taken so far. The file only counts hints, it holds
    none of the learner's work: one that is cut short or edited into something else
    loses its counts, with a note, rather than stop the scoreboard or the next hint."""
    path = path or HINTS_USED_FILE
    try:
        used = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        used = None
    if isinstance(used, dict) and all(isinstance(count, int) and count >= 0 for count in used.values()):
        return used
    print(
        f"note: {path.name} is unreadable or damaged; the hints used are counted from 0 again",
        file=sys.stderr,
    )
    return {}


def save_hints_used(used: dict[str, int], path: Path) -> None:
    """Written whole to a temporary file beside it, then renamed over it in one step: a
    crash or Ctrl+C while it is written leaves the previous counts, never a cut file."""
    fd, temporary = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(used, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def next_hint(todo_id: str, path: Path | None = None) -> str:
    """The next hint of a TODO (the last one again once all are shown), counted as used."""
    path = path or HINTS_USED_FILE
    used = hints_used(path)
    layer = min(used.get(todo_id, 0), len(LAYERS) - 1)
    used[todo_id] = layer + 1
    save_hints_used(used, path)
    left = len(LAYERS) - layer - 1
    if left:
        more = f"{left} more: run the same command again."
    else:
        more = "That was the last hint; the solution file has the complete code."
    header = f"TODO {todo_id}, hint {layer + 1}/{len(LAYERS)} ({LAYERS[layer]}):"
    text = "\n".join(textwrap.fill(line, 88) for line in HINTS[todo_id][layer].splitlines())
    return f"{header}\n\n{text}\n\n{more}"
