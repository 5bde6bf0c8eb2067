"""Watching a run while it trains: TensorBoard's event files in save_dir/tensorboard/, and with
--use_wandb 1 Weights & Biases or SwanLab (optional packages, offline without an account). They get
metrics.jsonl's numbers under TAGS's names, the samples and the options; the event files are run
files (staged until the first checkpoint); a resume continues the same tracked run. Only rank 0
tracks. docs/watching.md tells the rest.
"""

from __future__ import annotations

import html
import importlib
import io
import netrc
import os
import secrets
import time
from contextlib import redirect_stdout
from pathlib import Path
from urllib.parse import urlparse

from course.errors import UsageError
from course.run_folder import TENSORBOARD_DIR, RunFolder

# metrics.jsonl's names → the trackers' (grouped: TensorBoard shows one section per prefix).
TAGS = {name: f"train/{name}" for name in ("loss", "aux_loss", "lr", "grad_norm", "skipped_steps")}
TAGS |= {name: f"perf/{name}" for name in ("tokens_per_sec", "mfu", "max_memory_gb")}
TAGS |= {"val_loss": "val/loss", "val_ppl": "val/perplexity", "val_bpb": "val/bits_per_byte"}

BACKENDS = {"wandb": "W&B", "swanlab": "SwanLab"}  # --wandb_backend: the package and its name
INSTALL_EXTRA = 'pip install -e ".[wandb]"'


def check_installed(config) -> None:
    """The packages the run's trackers need, found before anything is written."""
    needed = []
    if config.tensorboard:
        needed.append(("tensorboard", "--tensorboard 1 writes TensorBoard's event files", "pip install -e ."))
    if config.use_wandb:
        what = f"--use_wandb 1 logs to {BACKENDS[config.wandb_backend]}"
        needed.append((config.wandb_backend, what, INSTALL_EXTRA))
    for package, what, install in needed:
        try:
            importlib.import_module(package)
        except ImportError:
            off = "--tensorboard 0" if package == "tensorboard" else "leave --use_wandb out"
            raise UsageError(f"{what}, and {package} is not installed: {install} (or {off})") from None


def saved_tracked_run_options(config, tracked_run: dict | None) -> dict:
    """On --from_resume 1: the options that name the checkpoint's tracked run, to continue it; one
    given with another value would log into another run: refused."""
    if tracked_run is None:
        return {}
    saved = {name: tracked_run[name] for name in config.tracked_run_options()}
    for name, value in saved.items():
        if name in config.options_given and getattr(config, name) != value:
            raise UsageError(
                f"--{name} {getattr(config, name)} would log into another run than the saved run's "
                f"{BACKENDS[saved['wandb_backend']]} run {tracked_run['id']} ({name}={value!r}): leave it "
                "out to continue that run, or start a new one in another --save_dir"
            )
    return saved


class Tracker:
    """The trackers of one run (none on the processes other than rank 0), fed by the Logbook."""

    def __init__(self, sinks: list) -> None:
        self.sinks = sinks

    def log(self, step: int, record: dict, optimizer=None) -> None:
        """A metrics.jsonl record, under TAGS's names; with the optimizer, each group's LR."""
        scalars = {TAGS[key]: value for key, value in record.items() if key in TAGS and value is not None}
        if optimizer is not None:
            for group in optimizer.param_groups:  # the LR each group's last step used
                scalars["lr/muon" if group.get("use_muon") else "lr/adamw"] = group["lr"]
        for sink in self.sinks:
            sink.scalars(step, scalars)

    def text(self, tag: str, text: str, step: int) -> None:
        for sink in self.sinks:
            sink.text(tag, text, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


OPEN: list[Tracker] = []  # closed when the run ends, however it ends (course.cli.main)


def open_tracker(config, is_main: bool, run, resumed_at: int | None) -> Tracker:
    """The run's trackers, on rank 0: TensorBoard, and W&B or SwanLab with --use_wandb 1 (on a
    resume, the checkpoint's tracked run: every checkpoint keeps run.tracked_run)."""
    sinks: list = []
    if not is_main:
        return Tracker(sinks)
    if config.tensorboard:
        sinks.append(TensorBoard(run, resumed_at))
    if config.use_wandb:
        # A new run's id comes from the operating system, never from the training's random state.
        run_id = run.tracked_run["id"] if run.tracked_run else secrets.token_hex(4)
        sinks.append({"wandb": WandB, "swanlab": SwanLab}[config.wandb_backend](config, run_id))
        run.tracked_run = {"id": run_id, **config.tracked_run_options()}
    tracker = Tracker(sinks)
    if sinks:
        OPEN.append(tracker)
        # At the first step this part of the run trains: a later resume supersedes it with its own.
        tracker.text("config", config_text(config), 0 if resumed_at is None else resumed_at + 1)
    return tracker


def close_all() -> None:
    while OPEN:
        OPEN.pop().close()


def config_text(config) -> str:
    """The run's options as a Markdown table (TensorBoard's text tab renders it)."""
    rows = [f"| {name} | {value!r} |" for name, value in config.to_dict().items() if name != "options_given"]
    return "\n".join(["| option | value |", "| --- | --- |", *rows])


class TensorBoard:
    """The event files in save_dir/tensorboard/ (torch.utils.tensorboard.SummaryWriter)."""

    def __init__(self, folder: RunFolder, resumed_at: int | None) -> None:
        self.folder = folder
        # Each part of the run starts its events at its first step, where TensorBoard drops what
        # earlier files logged from there on: a resume supersedes the steps after its checkpoint.
        self.purge_step = 0 if resumed_at is None else resumed_at + 1
        self.writer = None
        # Closed before the run's files move; the next write opens a new file (the same run to TensorBoard).
        folder.before_commit.append(self.close)

    def _writer(self):
        """The open writer, opened where the run's files go now (staged or in place)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.folder.path(TENSORBOARD_DIR)
            wait_for_a_later_second(log_dir)
            self.writer = SummaryWriter(log_dir, purge_step=self.purge_step)
            self.purge_step = None  # once: a later file of this process supersedes nothing
        return self.writer

    def scalars(self, step: int, scalars: dict) -> None:
        writer = self._writer()
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        writer.flush()  # on disk at every log line: `tensorboard` shows it while the run trains

    def text(self, tag: str, text: str, step: int) -> None:
        writer = self._writer()
        # Markdown: indented by four spaces, a sample keeps its line breaks.
        writer.add_text(tag, text if tag == "config" else "    " + text.replace("\n", "\n    "), step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads event files in the order of their names, which begin with the second the
    file was opened in: a resume's file of the same second as an earlier part's could sort first,
    and its supersession be undone. So it waits for a later second (tiny runs only)."""
    newest = -1
    for path in log_dir.glob("events.out.tfevents.*"):
        seconds = path.name.split(".")[3]  # events out tfevents SECONDS HOST PID COUNTER
        if seconds.isdigit():
            newest = max(newest, int(seconds))
    while time.time() < newest + 1:
        time.sleep(0.01)


def wandb_has_account() -> bool:
    """An API key in the environment, or the one `wandb login` saved in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_options(config, run_id: str, offline: bool) -> dict:
    """What W&B and SwanLab are told alike: which run, continued if it exists, and where."""
    which = dict(project=config.wandb_project, name=config.wandb_run_name, id=run_id)
    return dict(**which, resume="allow", mode="offline" if offline else None)


class WandB:
    """A Weights & Biases run: the checkpoint's one on a resume, else a new one."""

    def __init__(self, config, run_id: str) -> None:
        import wandb

        offline = "WANDB_MODE" not in os.environ and not wandb_has_account()
        quiet = wandb.Settings(console="off", silent=True)  # the progress bar stays as it is
        self.run = wandb.init(**run_options(config, run_id, offline), settings=quiet)
        self.run.config.update(config.to_dict(), allow_val_change=True)  # a resume may apply new values
        if self.run.settings.mode == "offline":
            sync = f"wandb sync {Path(self.run.dir).parent}"
            print(f"note: W&B logs offline (no account here, or WANDB_MODE); `{sync}` uploads it")
        self.html = wandb.Html

    def scalars(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.run.log({tag: self.html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanLab:
    """A SwanLab run (MiniMind's tracker today): the checkpoint's one on a resume, else a new one."""

    def __init__(self, config, run_id: str) -> None:
        import swanlab

        offline = "SWANLAB_MODE" not in os.environ and not swanlab.Settings().api_key
        with redirect_stdout(io.StringIO()):  # its banner; the note below says what matters
            self.run = swanlab.init(**run_options(config, run_id, offline), config=config.to_dict())
        if self.run.mode == "offline":
            sync = f"swanlab sync {self.run.dir}"
            print(f"note: SwanLab logs offline (no account here, or SWANLAB_MODE); `{sync}` uploads it")
        self.swanlab = swanlab

    def scalars(self, step: int, scalars: dict) -> None:
        self.swanlab.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.swanlab.log({tag: self.swanlab.Text(text)}, step=step)

    def close(self) -> None:
        with redirect_stdout(io.StringIO()):
            self.swanlab.finish()
