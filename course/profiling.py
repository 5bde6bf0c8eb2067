"""--profile N: where the time of a training step goes. Rank 0 records N training steps after the
first (which pays one-time costs such as compilation), writes profile.pt.trace.json (Perfetto,
chrome://tracing) and prints the operations that took the most time; the training goes on."""

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
        self.steps, self.folder, self.on_gpu = steps, folder, device.type == "cuda"
        self.activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.on_gpu else [])]
        self.profiler: profile | None = None
        if steps > 0 and is_main:
            after_one_step = schedule(wait=0, warmup=1, active=steps, repeat=1)
            self.profiler = profile(
                activities=self.activities, schedule=after_one_step, on_trace_ready=self.report
            )

    def __enter__(self) -> "StepProfiler":
        if self.profiler is not None:
            self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(*exc)
            self.profiler = None

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing inside is recorded (a sample of 300 tokens is no part of a step). Each toggle
        warns of GPU events on "arbitrary tracks", also on a CPU: torch's check is wrong there."""
        if self.profiler is None or self.profiler.current_action not in RECORDING:
            yield
            return
        self.profiler.toggle_collection_dynamic(False, self.activities)
        try:
            yield
        finally:
            self.profiler.toggle_collection_dynamic(True, self.activities)

    def report(self, prof: profile) -> None:
        """Once the N steps are recorded, or when the run ends before: the trace and the table."""
        recorded = min(self.steps, prof.step_num - 1)  # steps so far, less the first
        if recorded <= 0:
            tqdm.write(
                f"note: --profile {self.steps} recorded no step: the run ended at its first one, which "
                "the profiler leaves out (it pays one-time costs); give the run more steps"
            )
            return
        prof.export_chrome_trace(str(self.folder.path(PROFILE_FILE)))
        tqdm.write(time_table(prof.key_averages(), recorded, self.on_gpu))
        where = self.folder.final_path(PROFILE_FILE)
        tqdm.write(f"trace of {recorded} steps in {where} (open it in Perfetto)")


def time_table(events, steps: int, on_gpu: bool) -> str:
    """The operations with the most time of their own (not their callees') per step: on a GPU the
    device's time (the CPU's is then mostly spent launching kernels)."""

    def own_time(event) -> float:  # microseconds over all recorded steps
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    ops = [e for e in events if own_time(e) > 0 and not e.key.startswith("ProfilerStep")]
    total = sum(own_time(e) for e in ops)
    lines = [
        f"where a step's {'GPU' if on_gpu else 'CPU'} time goes ({total / steps / 1e3:.1f} ms of "
        f"operations per step, over {steps} steps):",
        f"  {'operation':<44} {'calls/step':>10} {'ms/step':>9} {'share':>6}",
    ]
    for event in sorted(ops, key=own_time, reverse=True)[:TABLE_ROWS]:
        name = event.key if len(event.key) <= 44 else event.key[:41] + "..."
        ms = own_time(event) / steps / 1e3
        lines.append(f"  {name:<44} {event.count / steps:>10.1f} {ms:>9.2f} {own_time(event) / total:>6.1%}")
    return "\n".join(lines)
