"""Watching a run while it trains: TensorBoard, and W&B or SwanLab with --use_wandb.

    save_dir/tensorboard/   TensorBoard's event files: `tensorboard --logdir out`, then
                            open http://localhost:6006 (no account, no server to set up)

Every run writes TensorBoard's event files (--tensorboard 0: none). With --use_wandb 1
it also logs to Weights & Biases, as MiniMind's train_pretrain.py does, or to SwanLab
(--wandb_backend swanlab: MiniMind's choice today, reachable from China); both are
optional packages (pip install -e ".[wandb]"). Without an account configured they log
offline, into their own folder (W&B: ./wandb, SwanLab: ./swanlog), to upload later.

What is logged is what metrics.jsonl holds, at the same steps, under the names in TAGS:
the training loss (the mean over every real target of every process since the last
log line), the auxiliary loss with MoE, the learning rate of each kind of optimizer
group (lr/adamw, lr/muon), the gradient norm before clipping, tokens/s, MFU on a known
GPU, peak GPU memory on CUDA; and at each evaluation the validation loss, perplexity
and bits per byte, and the text sample. The run's config goes in as text, once per
part of the run: at step 0, and after a resume at the first step it trains.

The event files follow the run folder's rules (course.run_folder): they are files of
the run. A new run writes them into its staging folder with its other files (TensorBoard
shows it as `.staging-<pid>/tensorboard` until then) and they move into
save_dir/tensorboard/ with its first checkpoint; so a run that ends before it leaves no
events behind, and with --overwrite 1 the old run's events stay until that checkpoint,
then go with its other files. TensorBoard's writer names its file on every write, so it
is closed before the move and a new file opened after it (the same run to TensorBoard).

One tracked run across every resume: a resume continues the same TensorBoard run and
supersedes what was logged after its checkpoint (purge_step: TensorBoard drops the
steps from there on in the earlier files, as the resume drops them from metrics.jsonl),
so no step appears twice. The W&B or SwanLab run's id is saved in resume.pt
(RunFolder.tracked_run) and --from_resume 1 continues that run (resume="allow"); W&B
keeps the values it already has of a step logged again, the same numbers, since a
resume is exact (tokens/s apart). --overwrite 1 starts a new tracked run.

Under torchrun only rank 0 tracks: the values it logs are already over every process.
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
TAGS = {
    "loss": "train/loss",
    "aux_loss": "train/aux_loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "skipped_steps": "train/skipped_steps",
    "tokens_per_sec": "perf/tokens_per_sec",
    "mfu": "perf/mfu",
    "max_memory_gb": "perf/max_memory_gb",
    "val_loss": "val/loss",
    "val_ppl": "val/perplexity",
    "val_bpb": "val/bits_per_byte",
}

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
    """On --from_resume 1: the options that name the checkpoint's tracked run, to
    continue it; one given with another value would log into another run: refused."""
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
    """The run's trackers: on rank 0, TensorBoard unless --tensorboard 0, and W&B or
    SwanLab with --use_wandb 1 (the checkpoint's tracked run on a resume). run: the
    RunFolder, whose tracked_run goes into every checkpoint."""
    sinks: list = []
    if not is_main:
        return Tracker(sinks)
    if config.tensorboard:
        sinks.append(TensorBoard(run, resumed_at))
    if config.use_wandb:
        online = {"wandb": WandB, "swanlab": SwanLab}[config.wandb_backend](config, run.tracked_run)
        run.tracked_run = online.tracked_run
        sinks.append(online)
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
        # Each part of the run starts its events with a session start at its first step, and
        # TensorBoard drops what was logged from that step on before it: a resume supersedes
        # the steps after its checkpoint. (TensorBoard takes a run's first session start for
        # its beginning, not a restart: a new run writes one too, at step 0.)
        self.purge_step = 0 if resumed_at is None else resumed_at + 1
        self.writer = None
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
    """TensorBoard reads a run's event files in the order of their names, which begin with
    the second the file was opened in (then the host, the process id and a counter, which
    sort as text: 10 before 9). A file opened within the same second as an earlier part's
    could sort before it, and a resume's supersession would then be read first and undone.
    So a new file waits for a later second than every file there: at most a second, and only
    when a part ended less than a second ago (a test's tiny runs; a real run's first
    checkpoint, or a resume after a kill, comes later than that)."""
    newest = -1
    for path in log_dir.glob("events.out.tfevents.*"):
        seconds = path.name.split(".")[3]  # events out tfevents SECONDS HOST PID COUNTER
        if seconds.isdigit():
            newest = max(newest, int(seconds))
    while time.time() < newest + 1:
        time.sleep(0.01)


def new_run_id() -> str:
    """8 characters of [0-9a-f], from the operating system (never the training's random state)."""
    return secrets.token_hex(4)


def wandb_has_account() -> bool:
    """An API key in the environment, or the one `wandb login` saved in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandB:
    """A Weights & Biases run: the checkpoint's one on a resume, else a new one."""

    def __init__(self, config, saved: dict | None) -> None:
        import wandb

        run_id = saved["id"] if saved else new_run_id()
        offline = "WANDB_MODE" not in os.environ and not wandb_has_account()
        self.run = wandb.init(
            project=config.wandb_project,
            name=config.wandb_run_name,
            id=run_id,
            resume="allow",
            mode="offline" if offline else None,
            settings=wandb.Settings(console="off", silent=True),  # the progress bar stays as it is
        )
        self.run.config.update(config.to_dict(), allow_val_change=True)  # a resume may apply new values
        self.tracked_run = tracked_run(config, run_id)
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

    def __init__(self, config, saved: dict | None) -> None:
        import swanlab

        run_id = saved["id"] if saved else new_run_id()
        offline = "SWANLAB_MODE" not in os.environ and not swanlab.Settings().api_key
        with redirect_stdout(io.StringIO()):  # its banner; the note below says what matters
            self.run = swanlab.init(
                project=config.wandb_project,
                name=config.wandb_run_name,
                id=run_id,
                resume="allow",
                mode="offline" if offline else None,
                config=config.to_dict(),
            )
        self.tracked_run = tracked_run(config, run_id)
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


def tracked_run(config, run_id: str) -> dict:
    """What resume.pt keeps of the tracked run: its id and the options that name it."""
    return {"id": run_id, **config.tracked_run_options()}
