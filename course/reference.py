"""The course's reference runs (reference_runs.json, made by tools/reference_runs.py): how far the
README's commands went on the machines they were measured on, so that a run can tell you whether it
is on track. A run finds its reference by its recipe: what decides its curve, not where its files
go (docs/reference-runs.md, "Is my loss good?").
"""

from __future__ import annotations

import json
from pathlib import Path

from course.config import NOT_IN_RECIPE

REFERENCE_FILE = Path(__file__).with_name("reference_runs.json")

# A run this close to its reference is on track: several times the spread between two
# seeds of the main job (docs/reference-runs.md, "Is my loss good?", gives it).
ON_TRACK_TOLERANCE = 0.02


def recipe(options: dict, schedule, dtype_name: str, world_size: int, data_source: dict) -> dict:
    """What decides a run's curve. options: its RunConfig as a dict; schedule: its Schedule;
    data_source: the corpus's identity (course.run_folder.data_identity)."""
    kept = {name: value for name, value in options.items() if name not in NOT_IN_RECIPE}
    return {
        **kept,
        "total_steps": schedule.total_steps,
        "end_step": schedule.end_step,
        "warmup_steps": schedule.warmup_steps,
        "min_lr": schedule.min_lr,
        "dtype": dtype_name,
        "world_size": world_size,
        "data_source": data_source,
    }


def load_references(path: Path | None = None) -> list[dict]:
    path = path or REFERENCE_FILE
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def find_reference(run_recipe: dict) -> dict | None:
    """The committed reference run with exactly this recipe, or None."""
    return next((ref for ref in load_references() if ref["recipe"] == run_recipe), None)


def nearest_reference(
    run_recipe: dict, references: list[dict] | None = None
) -> tuple[dict, list[str]] | None:
    """For a run with no reference of its own: the reference on the same text (default: the
    committed ones) whose recipe differs in the fewest fields, and those (None: no such text)."""
    references = load_references() if references is None else references
    same_text = [ref for ref in references if ref["recipe"]["data_source"] == run_recipe["data_source"]]
    if not same_text:
        return None

    def differences(ref: dict) -> list[str]:
        return sorted(name for name in run_recipe.keys() | ref["recipe"].keys()
                      if run_recipe.get(name) != ref["recipe"].get(name))  # fmt: skip

    nearest = min(same_text, key=lambda ref: len(differences(ref)))
    return nearest, differences(nearest)


def advice(nearest: tuple[dict, list[str]]) -> str:
    """Where the nearest reference is, in words a learner can act on: its command, and what differs."""
    ref, fields = nearest
    there, command = ref["recipe"], ref["command"]
    if fields == ["dtype"]:
        return (
            f"add --dtype {there['dtype']} to compare with the reference of `{command}` "
            f"({there['dtype']}, {ref['machine']})"
        )
    shown = ", ".join(f"{name} ({there.get(name)} there)" for name in fields[:4])
    more = f" and {len(fields) - 4} more" if len(fields) > 4 else ""
    return f"the nearest is `{command}` ({there['dtype']}, {ref['machine']}), which differs in {shown}{more}"


def final_validation(records: list[dict]) -> dict | None:
    """The last evaluation among a run's metrics records."""
    return next((r for r in reversed(records) if "val_loss" in r), None)


def verdict(
    val_loss: float, val_bpb: float, reference: dict | None, nearest: tuple[dict, list[str]] | None = None
) -> str:
    """The end-of-run line: the final validation loss against the reference, or the nearest one."""
    line = f"val {val_loss:.3f} ({val_bpb:.3f} bits/byte)"
    if reference is None:
        none = f"{line}; the course has no reference run of this command and number type"
        return f"{none}: {advice(nearest)}" if nearest is not None else f"{none} to compare with"
    ref = reference["final"]
    gap = val_loss - ref["val_loss"]
    if gap > ON_TRACK_TOLERANCE:
        judgement = f"behind by {gap:.3f}: metrics.png shows where this run's curve left the reference's"
    elif gap < -ON_TRACK_TOLERANCE:
        judgement = f"ahead by {-gap:.3f}"
    else:
        judgement = "on track"
    return (
        f"{line}; the reference run of this command reached {ref['val_loss']:.3f} "
        f"({ref['val_bpb']:.3f} bits/byte) in {reference['recipe']['dtype']} on {reference['machine']}: "
        f"{judgement}"
    )
