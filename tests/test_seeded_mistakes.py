"""Plausible wrong implementations, fed to the grader: each must be caught by the
right TODO's tests, with a message that names the mistake."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys

import pytest
import test_todo_data
import test_todo_train
import torch
from conftest import ROOT, make_exercises
from test_grading import graded_cases, run_case, todo_marker
from todos import Learner, load, rank

from tests import scoreboard

# (TODO, solution file, correct code, mistake, graded test, words the failure must contain)
MISTAKES = {
    "y not shifted (off by one)": (
        "data_solution.py",
        "y = torch.from_numpy(self.tokens[s + 1 : s + T + 1].astype(np.int64))",
        "y = torch.from_numpy(self.tokens[s : s + T].astype(np.int64))",
        lambda lr, tmp: test_todo_data.test_todo_1_windows_match_slicing(lr, 100, 8, 8),
        "y must be x shifted by one position",
    ),
    "x and y left as uint16": (
        "data_solution.py",
        "x = torch.from_numpy(self.tokens[s : s + T].astype(np.int64))",
        "x = torch.from_numpy(self.tokens[s : s + T].astype(np.int32))",
        lambda lr, tmp: test_todo_data.test_todo_1_windows_match_slicing(lr, 100, 8, 8),
        "x and y must be int64",
    ),
    "padding targets not ignored": (
        "data_solution.py",
        "y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)",
        "y = torch.full((T,), pad, dtype=torch.long)",
        lambda lr, tmp: test_todo_data.test_todo_7_documents_are_bos_tokens_eos_padded_with_ignored_labels(
            lr, tmp, 40
        ),
        "must be -100 (IGNORE_INDEX)",
    ),
    "warmup from 0 instead of step + 1": (
        "train_solution.py",
        "return max_lr * (step + 1) / warmup_steps",
        "return max_lr * step / warmup_steps",
        lambda lr, tmp: test_todo_train.test_todo_2a_linear_warmup(lr, 10),
        "the ramp must already be above 0 at step 0",
    ),
    "cosine over total_steps instead of total_steps - warmup_steps": (
        "train_solution.py",
        "progress = (step - warmup_steps) / (total_steps - warmup_steps)",
        "progress = (step - warmup_steps) / total_steps",
        lambda lr, tmp: test_todo_train.test_todo_2b_cosine_decay(lr, 10, 100),
        "total_steps - warmup_steps",
    ),
    "cosine that decays to 0 instead of min_lr": (
        "train_solution.py",
        "return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))",
        "return 0.5 * max_lr * (1.0 + math.cos(math.pi * progress))",
        lambda lr, tmp: test_todo_train.test_todo_2b_cosine_decay(lr, 10, 100),
        "from max_lr to min_lr, not to 0: near the end, at step 99, the LR should be 6.01645e-05, got 1.8",
    ),
    "document cut to T tokens instead of T + 1": (
        "data_solution.py",
        "tokens = ([bos] + ids + [eos])[: T + 1]",
        "tokens = ([bos] + ids + [eos])[:T]",
        lambda lr, tmp: test_todo_data.test_todo_7_documents_are_bos_tokens_eos_padded_with_ignored_labels(
            lr, tmp, 8
        ),
        "cut the sequence to max_seq_len + 1 tokens, not max_seq_len",
    ),
    "optimizer.step() instead of scaler.step(optimizer)": (
        "train_solution.py",
        "    scaler.step(optimizer)\n",
        "    optimizer.step()\n",
        lambda lr, tmp: test_todo_train.test_todo_3c_a_float16_step_whose_gradients_overflowed_is_skipped(lr),
        "the optimizer was stepped directly",
    ),
    "no min_lr floor after total_steps": (
        "train_solution.py",
        "    if step >= total_steps:\n        return min_lr\n",
        "",
        lambda lr, tmp: test_todo_train.test_todo_2b_cosine_decay(lr, 10, 100),
        "stays at min_lr",
    ),
    "lr_scale ignored": (
        "train_solution.py",
        '        group["lr"] = lr * group.get("lr_scale", 1.0)\n',
        '        group["lr"] = lr\n',
        lambda lr, tmp: test_todo_train.test_todo_3a_a_group_with_an_lr_scale_gets_lr_times_its_scale(lr),
        "gets lr × lr_scale",
    ),
    "lr_scale read from every group": (
        "train_solution.py",
        '        group["lr"] = lr * group.get("lr_scale", 1.0)\n',
        '        group["lr"] = lr * group["lr_scale"]\n',
        lambda lr, tmp: test_todo_train.test_todo_3a_set_lr_on_every_param_group(lr),
        "AdamW's groups carry no lr_scale",
    ),
    "LR set on the first param group only": (
        "train_solution.py",
        '    for group in optimizer.param_groups:\n        group["lr"] = lr * group.get("lr_scale", 1.0)\n',
        '    optimizer.param_groups[0]["lr"] = lr\n',
        lambda lr, tmp: test_todo_train.test_todo_3a_set_lr_on_every_param_group(lr),
        "every param group",
    ),
    "clip before unscale": (
        "train_solution.py",
        '    scaler.unscale_(optimizer)\n    max_norm = grad_clip if grad_clip > 0 else float("inf")\n'
        "    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n",
        '    max_norm = grad_clip if grad_clip > 0 else float("inf")\n'
        "    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
        "    scaler.unscale_(optimizer)\n",
        lambda lr, tmp: test_todo_train.test_todo_3c_clips_the_unscaled_gradient_then_steps(lr, 2.0**10),
        "the scaler must divide its factor out of them before they are clipped",
    ),
    "no gradient clipping": (
        "train_solution.py",
        'max_norm = grad_clip if grad_clip > 0 else float("inf")',
        'max_norm = float("inf")',
        lambda lr, tmp: test_todo_train.test_todo_3c_clips_the_unscaled_gradient_then_steps(lr, None),
        "was not clipped",
    ),
    "zero_grad forgotten": (
        "train_solution.py",
        "    optimizer.zero_grad(set_to_none=True)\n    return grad_norm.detach()",
        "    return grad_norm.detach()",
        lambda lr, tmp: test_todo_train.test_todo_3c_clips_the_unscaled_gradient_then_steps(lr, None),
        "gradients are still there after the step",
    ),
    "scaler.update forgotten": (
        "train_solution.py",
        "    scaler.step(optimizer)\n    scaler.update()\n",
        "    scaler.step(optimizer)\n",
        lambda lr, tmp: test_todo_train.test_todo_3c_clips_the_unscaled_gradient_then_steps(lr, 2.0**10),
        "the scaler must update its scale",
    ),
    "loss not divided by the accumulation steps": (
        "train_solution.py",
        "            scaler.scale((lm_loss + aux_loss) * count / targets_per_process).backward()\n",
        "            scaler.scale(lm_loss + aux_loss).backward()\n",
        lambda lr, tmp: test_todo_train.test_todo_4_accumulated_gradient_equals_the_big_batch_gradient(lr),
        "divide each micro-batch loss",
    ),
    "padded micro-batches divided by k instead of weighted by their targets": (
        "train_solution.py",
        "            scaler.scale((lm_loss + aux_loss) * count / targets_per_process).backward()\n",
        "            scaler.scale((lm_loss + aux_loss) / len(micro_batches)).backward()\n",
        lambda lr, tmp: test_todo_train.test_todo_4_padded_micro_batches_weigh_every_real_target_the_same(lr),
        "not by 1/k",
    ),
    "each DDP process divides by its own count of targets": (
        "train_solution.py",
        "targets_per_process = mean_over_processes(sum(counts))",
        "targets_per_process = sum(counts)",
        lambda lr, tmp: test_todo_train.test_todo_4_ddp_processes_divide_by_the_mean_count(
            lr, pytest.MonkeyPatch()
        ),
        "Divide by the mean count of a process",
    ),
    "no_sync on every micro-batch": (
        "train_solution.py",
        "with nullcontext() if is_last else no_sync(model):",
        "with no_sync(model):",
        lambda lr, tmp: test_todo_train.test_todo_4_skips_the_all_reduce_on_all_but_the_last_micro_batch(lr),
        "every micro-batch but the last",
    ),
    "count of real targets as a Python int": (
        "train_solution.py",
        "counts = [(y != IGNORE_INDEX).sum() for _, y in micro_batches]",
        "counts = [int((y != IGNORE_INDEX).sum()) for _, y in micro_batches]",
        lambda lr, tmp: test_todo_train.test_todo_4_ddp_processes_divide_by_the_mean_count(
            lr, pytest.MonkeyPatch()
        ),
        "not a tensor",
    ),
    "returned loss divided by the mean count of a process": (
        "train_solution.py",
        "    return lm_sum / targets, aux_sum / targets, targets\n",
        "    return lm_sum / targets_per_process, aux_sum / targets_per_process, targets\n",
        lambda lr, tmp: test_todo_train.test_todo_4_ddp_processes_divide_by_the_mean_count(
            lr, pytest.MonkeyPatch()
        ),
        "the returned loss is still this process's own mean loss per real target",
    ),
    "hand-written cross-entropy drops the MoE load-balancing loss": (
        "train_solution.py",
        "    _, lm_loss, aux_loss = model(x, targets=y)\n    return lm_loss, aux_loss\n",
        "    logits = model(x).logits\n    cross_entropy = torch.nn.functional.cross_entropy\n"
        "    lm_loss = cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)\n"
        "    return lm_loss, 0 * lm_loss\n",
        lambda lr, tmp: test_todo_train.test_todo_3b_the_loss_keeps_every_term_the_model_trains_with(lr),
        "load-balancing term",
    ),
    "auxiliary loss added into the LM loss": (
        "train_solution.py",
        "    return lm_loss, aux_loss\n",
        "    return lm_loss + aux_loss, aux_loss\n",
        lambda lr, tmp: test_todo_train.test_todo_3b_the_loss_keeps_every_term_the_model_trains_with(lr),
        "keep the two apart",
    ),
    "auxiliary loss left out of the backward": (
        "train_solution.py",
        "            scaler.scale((lm_loss + aux_loss) * count / targets_per_process).backward()\n",
        "            scaler.scale(lm_loss * count / targets_per_process).backward()\n",
        lambda lr, tmp: test_todo_train.test_todo_4_the_objective_holds_the_auxiliary_loss(lr),
        "the objective is the LM loss plus the auxiliary loss",
    ),
    "GradScaler's state not restored": (
        "train_solution.py",
        '    scaler.load_state_dict(checkpoint["scaler"])\n',
        "",
        lambda lr, tmp: test_todo_train.test_todo_8_restore_brings_back_every_piece_of_the_state(lr),
        "the GradScaler's state must be saved and restored",
    ),
    "autocast for CUDA whatever the device": (
        "train_solution.py",
        "return torch.autocast(device_type=device.type, dtype=dtype)",
        'return torch.autocast(device_type="cuda", dtype=dtype)',
        lambda lr, tmp: test_todo_train.test_todo_5_autocast_runs_matmuls_in_the_16_bit_type(
            lr, torch.bfloat16
        ),
        "asked for the CPU, the context turns mixed precision on for 'cuda'",
    ),
    "GradScaler enabled for bfloat16 too": (
        "train_solution.py",
        "enabled=dtype == torch.float16",
        "enabled=dtype != torch.float32",
        lambda lr, tmp: test_todo_train.test_todo_5_grad_scaler_only_for_float16(lr),
        "bfloat16 has float32's range",
    ),
    "evaluation averages the batch means of padded batches": (
        "train_solution.py",
        "    loss_sum = sum(loss * count for loss, count in zip(lm_losses, counts, strict=True))\n"
        "    totals = sum_over_processes(torch.stack([loss_sum, sum(counts).float()]))",
        "    totals = sum_over_processes(torch.stack([sum(lm_losses), torch.tensor(float(len(lm_losses)))]))",
        lambda lr, tmp: test_todo_train.test_todo_6_padded_batches_weigh_every_real_target_the_same(lr),
        "not the mean of the batch means",
    ),
    "evaluation of this process's windows only": (
        "train_solution.py",
        "    totals = sum_over_processes(torch.stack([loss_sum, sum(counts).float()]))",
        "    totals = torch.stack([loss_sum, sum(counts).float()])",
        lambda lr, tmp: test_todo_train.test_todo_6_every_process_s_windows_weigh_the_same(
            lr, pytest.MonkeyPatch()
        ),
        "each process evaluated only its own share",
    ),
    "evaluation averages the means of the processes": (
        "train_solution.py",
        "    totals = sum_over_processes(torch.stack([loss_sum, sum(counts).float()]))",
        "    totals = sum_over_processes(torch.stack([loss_sum / sum(counts), torch.tensor(1.0)]))",
        lambda lr, tmp: test_todo_train.test_todo_6_every_process_s_windows_weigh_the_same(
            lr, pytest.MonkeyPatch()
        ),
        "the mean of their two means",
    ),
    "evaluation without model.eval()": (
        "train_solution.py",
        "    model.eval()\n    with torch.no_grad(), amp_ctx:",
        "    with torch.no_grad(), amp_ctx:",
        lambda lr, tmp: test_todo_train.test_todo_6_dropout_off_and_train_mode_restored(lr),
        "dropout was on",
    ),
    "evaluation without no_grad": (
        "train_solution.py",
        "    with torch.no_grad(), amp_ctx:\n",
        "    with amp_ctx:\n",
        lambda lr, tmp: test_todo_train.test_todo_6_no_graph_and_amp_context(lr),
        "the evaluation built an autograd graph",
    ),
}


def mutant(file: str, correct: str, wrong: str, tmp_path) -> Learner:
    source = (ROOT / file).read_text()
    assert source.count(correct) == 1, f"the seeded mistake no longer matches {file}: update this test"
    name = f"mutant_{file.removesuffix('.py')}_{abs(hash(wrong))}"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(correct, wrong))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    reference = load("solution")
    return Learner(module, reference.train) if file.startswith("data") else Learner(reference.data, module)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_seeded_mistake_is_caught_by_the_right_todo(mistake, tmp_path):
    file, correct, wrong, graded_test, words = MISTAKES[mistake]
    learner = mutant(file, correct, wrong, tmp_path)
    with pytest.raises((AssertionError, pytest.fail.Exception)) as caught:
        graded_test(learner, tmp_path)
    assert words in str(caught.value), f"{mistake}: caught, but the message does not name it: {caught.value}"
    leaked = given_away(str(caught.value))
    assert not leaked, f"{mistake}: the message prints the solution's code {leaked}; leave that to --hint"


# Mistakes whose TODO has several tests that fail, with a message about their own special
# case (MoE, DDP, float16) beside the one that names the mistake: the scoreboard must show
# the latter (tests/todos.py, `rank`). Each runs every graded test of its TODO.
ON_THE_SCOREBOARD = [
    "padded micro-batches divided by k instead of weighted by their targets",
    "loss not divided by the accumulation steps",
    "hand-written cross-entropy drops the MoE load-balancing loss",
    "clip before unscale",
    "evaluation averages the batch means of padded batches",
]


@pytest.mark.parametrize("mistake", ON_THE_SCOREBOARD)
def test_the_scoreboard_shows_the_message_that_names_the_mistake(mistake, tmp_path):
    file, correct, wrong, graded_test, words = MISTAKES[mistake]
    learner = mutant(file, correct, wrong, tmp_path)
    todo = todo_marker(graded_test_of(graded_test)).args[0]
    board = scoreboard.Scoreboard()
    for n, (func, kwargs) in enumerate((f, k) for t, f, k in graded_cases() if t == todo):
        (tmp_path / str(n)).mkdir()
        with pytest.MonkeyPatch.context() as patch:
            try:
                run_case(func, learner, kwargs, tmp_path / str(n), patch)
                board.record(todo, False, rank=rank(todo_marker(func)))
            except (Exception, pytest.fail.Exception) as err:  # what the scoreboard's plugin sees
                board.record(todo, True, scoreboard.describe(err), rank(todo_marker(func)))
    assert board.status[todo] == scoreboard.FAILED, f"{mistake}: every test of TODO {todo} passed"
    assert words in board.reason[todo], f"{mistake}: the scoreboard shows {board.reason[todo]!r}"


def graded_test_of(call):
    """The graded test a MISTAKES entry calls (the name its lambda looks up)."""
    modules = (test_todo_data, test_todo_train)
    return next(vars(m)[name] for name in call.__code__.co_names for m in modules if name in vars(m))


# A first failure diagnoses: it says what is wrong and where to look. The formula or the
# API call that fixes it comes only from `--hint`, so pasting messages never reaches green.
CALL = re.compile(r"[A-Za-z_][\w.]*\(")
KEYWORD = re.compile(r"^(?:return|with|for|if|elif|while)\s+(?P<rest>.*?):?$")
MODULE_PREFIX = re.compile(r"\b(?:torch|math|np|numpy|nn|F)\.")


def normalized(text: str) -> str:
    """Code as a comparison sees it: no spaces, no module prefixes, one kind of quote,
    1.0 written 1."""
    text = MODULE_PREFIX.sub("", re.sub(r"\s+", "", text)).replace("'", '"')
    return re.sub(r"(?<![\w.])(\d+)\.0(?![\d])", r"\1", text)


def calls(line: str) -> list[str]:
    """Every call in a line, nested ones too: `f(g(x))` gives `f(g(x))` and `g(x)`."""
    found = []
    for match in CALL.finditer(line):
        depth = 0
        for end in range(match.end() - 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                found.append(line[match.start() : end + 1])
                break
    return found


def fragments(code_line: str) -> list[str]:
    """The pieces of a solution line a message could print: the line, what follows its
    keyword or its `=`, every call in it, and the opening `name(` of each call."""
    line = code_line.split("  # ")[0].strip()
    pieces = [line, *calls(line), *(call[: call.index("(") + 1] for call in calls(line))]
    if keyword := KEYWORD.match(line):
        pieces.append(keyword["rest"])
    if re.match(r"^[\w.\[\]\"', :()]+ [-+*/]?= ", line):
        pieces.append(line.split("= ", 1)[1])
    return pieces


def solution_code() -> set[str]:
    """Every fragment of 12+ characters (normalized) of every TODO region's code."""
    code = set()
    for solution in make_exercises.PAIRS:
        for _, region in make_exercises.regions((ROOT / solution).read_text()):
            for line in region.splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    code |= {normalized(p) for p in fragments(line) if len(normalized(p)) >= 12}
    return code


SOLUTION_CODE = solution_code()


def given_away(message: str) -> list[str]:
    text = normalized(message)
    return sorted(code for code in SOLUTION_CODE if code in text)


def message_texts(path) -> list[tuple[int, str]]:
    """The string literals of a test module, f-strings with {} for their fields."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            parts = (v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            texts.append((node.lineno, "".join(parts)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append((node.lineno, node.value))
    return texts


def test_the_check_for_printed_code_catches_a_call_a_formula_and_a_line():
    assert normalized("scaler.step(optimizer)") in given_away("call scaler.step( optimizer ) first")
    assert given_away("the LR is min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress))")
    assert given_away("write `return max_lr * (step + 1) / warmup_steps`")
    assert not given_away("the LR must already be above 0 at step 0")


def api_names() -> set[str]:
    """The API a TODO region's code calls or reads (`clip_grad_norm_`, `param_groups`,
    `GradScaler`, `autocast`): names with an underscore or a capital, or no English word,
    less the interface the chapter gives (the names it imports from the course's own
    modules and the names in its signatures), which a contract may name."""
    api, given = set(), set()
    for solution in make_exercises.PAIRS:
        source = (ROOT / solution).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in (
                "course",
                "model",
                "data_solution",
            ):
                given |= {alias.name for alias in node.names}
            elif isinstance(node, ast.FunctionDef):
                given |= {a.arg for a in (*node.args.args, *node.args.kwonlyargs)}
        for _, region in make_exercises.regions(source):
            code = "\n".join(line for line in region.splitlines() if not line.strip().startswith("#"))
            api |= set(re.findall(r"\.([A-Za-z_]\w*)", code)) | set(re.findall(r"\b([A-Za-z_]\w*)\(", code))
    wordlike = lambda name: "_" not in name and name.islower() and name not in ("autocast", "astype", "cos")
    return {name for name in api if not wordlike(name)} - given


@pytest.mark.parametrize("solution", make_exercises.PAIRS)
def test_challenge_texts_state_properties_without_code_or_api(solution):
    """The challenge level says what must hold; the code and the API are for the hints."""
    from course.todos import CHALLENGE

    api = api_names()
    for todo in dict.fromkeys(make_exercises.todo_ids((ROOT / solution).read_text())):
        for text in CHALLENGE[todo]:
            assert not given_away(text), f"TODO {todo}: the challenge text prints code {given_away(text)}"
            named = sorted(name for name in api if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text))
            assert not named, f"TODO {todo}: the challenge text names the API {named}; leave that to --hint"


def test_the_check_for_api_names_knows_the_api_and_the_interface():
    api = api_names()
    assert {"param_groups", "clip_grad_norm_", "unscale_", "zero_grad", "autocast", "load_state_dict"} <= api
    interface = {"mean_over_processes", "no_sync", "IGNORE_INDEX", "amp_ctx", "grad_clip", "best_val_loss"}
    assert not interface & api


@pytest.mark.parametrize("module", ["test_todo_data.py", "test_todo_train.py"])
def test_no_grading_message_prints_the_solutions_code(module):
    """Every string a graded test can print, whether or not a seeded mistake reaches it."""
    leaks = sorted(
        {(line, code) for line, text in message_texts(ROOT / "tests" / module) for code in given_away(text)}
    )
    assert not leaks, f"{module}: messages print the solution's code (line: code): {leaks}"
