"""--profile N: where the time of a training step goes, measured with torch.profiler.

    python train_solution.py --profile 5 --max_steps 20 --save_dir out_profile

The profiler records N training steps after the run's first one (which pays one-time
costs: memory allocation, compilation, the first DataLoader batch; a run that ends
sooner gives the steps it had, and says how many), writes them to the
run's folder as profile.pt.trace.json, and prints a table of the operations that took
the most time. It is paused while the run evaluates and saves (`paused`), so the trace
and the table hold training steps only. The trace opens in Perfetto (ui.perfetto.dev,
"Open trace file") or in chrome://tracing, and TensorBoard's profiler plugin reads the
folder. Rank 0 alone profiles; the run goes on training afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, schedule
from tqdm import tqdm

from course.run_folder import PROFILE_FILE, RunFolder

TABLE_ROWS = 12  # one screen
RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


class StepProfiler:
    """A context around the training loop; call step() after every training step."""

    def __init__(self, steps: int, folder: RunFolder, device: torch.device, is_main: bool) -> None:
        self.steps, self.folder, self.device = steps, folder, device
        self.steps_done = 0  # training steps so far; the first is the warmup, not recorded
        self.profiler: profile | None = None
        self.activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            self.activities.append(ProfilerActivity.CUDA)
        if steps > 0 and is_main:
            self.profiler = profile(
                activities=self.activities,
                schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),  # warmup: the first step
                on_trace_ready=self.report,
            )

    def __enter__(self) -> StepProfiler:
        if self.profiler is not None:
            self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(*exc)
            self.profiler = None

    def step(self) -> None:
        if self.profiler is not None:
            self.steps_done += 1  # first: the step that ends the recording calls report
            self.profiler.step()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing inside is recorded: the evaluations and checkpoints between training
        steps would otherwise count as part of the next step (a sample of 300 tokens is
        300 forward passes). Outside the recorded steps it changes nothing. (Each toggle
        logs a warning about GPU events on "arbitrary tracks", also on a CPU-only run:
        torch's check for it is wrong; the trace's steps are right.)"""
        if self.profiler is None or self.profiler.current_action not in RECORDING:
            yield
            return
        self.profiler.toggle_collection_dynamic(False, self.activities)
        try:
            yield
        finally:
            self.profiler.toggle_collection_dynamic(True, self.activities)

    def report(self, prof: profile) -> None:
        """Called by the profiler once the N steps are recorded, or when the run ends
        before: the trace and the table, per step of those it recorded."""
        recorded = min(self.steps, self.steps_done - 1)
        if recorded <= 0:
            tqdm.write(
                f"note: --profile {self.steps} recorded no step: the run ended at its first one, which "
                "the profiler leaves out (it pays one-time costs); give the run more steps"
            )
            return
        path = self.folder.path(PROFILE_FILE)
        prof.export_chrome_trace(str(path))
        on_gpu = self.device.type == "cuda"
        tqdm.write(time_table(prof.key_averages(), recorded, on_gpu))
        where = self.folder.final_path(PROFILE_FILE)
        tqdm.write(f"trace of {recorded} steps in {where} (open it in Perfetto)")


def time_table(events, steps: int, on_gpu: bool) -> str:
    """The operations with the most time of their own (not counting the operations they
    call), per step, and their share of the step. On a GPU the device time is what counts;
    the CPU's is then mostly spent launching kernels."""

    def own_time(event) -> float:  # microseconds over all recorded steps
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    ops = [e for e in events if own_time(e) > 0 and not e.key.startswith("ProfilerStep")]
    total = sum(own_time(e) for e in ops)
    where = "GPU" if on_gpu else "CPU"
    lines = [
        f"where a step's {where} time goes ({total / steps / 1e3:.1f} ms of operations per step, "
        f"over {steps} steps):",
        f"  {'operation':<44} {'calls/step':>10} {'ms/step':>9} {'share':>6}",
    ]
    for event in sorted(ops, key=own_time, reverse=True)[:TABLE_ROWS]:
        name = event.key if len(event.key) <= 44 else event.key[:41] + "..."
        lines.append(
            f"  {name:<44} {event.count / steps:>10.1f} {own_time(event) / steps / 1e3:>9.2f} "
            f"{own_time(event) / total:>6.1%}"
        )
    return "\n".join(lines)
