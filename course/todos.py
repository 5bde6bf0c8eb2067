"""The TODOs of the exercise files and the hints behind `--hint`, one layer at a time. The
hints and challenge texts are prose, in course/hints.md; .hints_used.json counts hints taken."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from course.run_folder import write_atomic

HINTS_USED_FILE = Path(__file__).resolve().parent.parent / ".hints_used.json"
HINTS_FILE = Path(__file__).with_name("hints.md")


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
LAYERS = ("the idea", "concepts and API names", "pseudocode")
HEADINGS = [f"{number}. {name}" for number, name in enumerate(LAYERS, start=1)] + ["challenge"]
LAST_HINT = "That was the last hint; the solution file has the complete code."


def read_hints(text: str) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Every TODO's three hint layers and its challenge texts, one per region. Anything out
    of shape raises: a slip in hints.md must fail loudly, not lose a hint."""
    sections = re.split(r"^## TODO (\w+)\n", text, flags=re.MULTILINE)[1:]
    if sorted(sections[0::2]) != sorted(TODOS):
        raise ValueError(f"hints.md: the TODO sections are {sections[0::2]}, the catalog's {list(TODOS)}")
    hints, challenge = {}, {}
    for todo_id, section in zip(sections[0::2], sections[1::2], strict=True):
        parts = re.split(r"^### (.+)\n", section, flags=re.MULTILINE)
        if parts[0].strip() or parts[1::2] != HEADINGS:
            raise ValueError(f"hints.md: TODO {todo_id} must hold just the subsections {HEADINGS}")
        idea, api, goals = (paragraphs(parts[i]) for i in (2, 4, 8))
        code = re.fullmatch(r"```\n([^`]+)\n```", parts[6].strip())  # the pseudocode keeps its lines
        if len(idea) != 1 or len(api) != 1 or code is None or not goals:
            raise ValueError(f"hints.md: TODO {todo_id}: one paragraph per layer, the pseudocode in ```")
        hints[todo_id], challenge[todo_id] = (idea[0], api[0], code[1]), tuple(goals)
    return hints, challenge


def paragraphs(text: str) -> list[str]:
    """A subsection's paragraphs, each joined into one line (the hint wraps it when shown)."""
    found = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    if any(paragraph.startswith(("#", "```")) for paragraph in found):
        raise ValueError(f"hints.md: a heading or a ``` block where paragraphs belong: {found}")
    return found


HINTS, CHALLENGE = read_hints(HINTS_FILE.read_text("utf-8"))


def hints_used() -> dict[str, int]:
    """How many hints each TODO has taken. The file holds none of the learner's work, so a
    damaged one costs its counts, with a note, rather than the scoreboard or the hint."""
    try:
        used = json.loads(HINTS_USED_FILE.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        used = None
    if isinstance(used, dict) and all(isinstance(count, int) and count >= 0 for count in used.values()):
        return used
    note = f"note: {HINTS_USED_FILE.name} is unreadable or damaged; the hints used are counted from 0 again"
    print(note, file=sys.stderr)
    return {}


def next_hint(todo_id: str) -> str:
    """The next hint of a TODO (the last one again once all are shown), counted as used."""
    used = hints_used()
    layer = min(used.get(todo_id, 0), len(LAYERS) - 1)
    used[todo_id] = layer + 1
    counts = json.dumps(used, indent=1, sort_keys=True) + "\n"
    write_atomic(HINTS_USED_FILE, lambda f: f.write(counts), "w")  # whole or not at all
    left = len(LAYERS) - layer - 1
    more = f"{left} more: run the same command again." if left else LAST_HINT
    header = f"TODO {todo_id}, hint {layer + 1}/{len(LAYERS)} ({LAYERS[layer]}):"
    text = "\n".join(textwrap.fill(line, 88) for line in HINTS[todo_id][layer].splitlines())
    return f"{header}\n\n{text}\n\n{more}"
