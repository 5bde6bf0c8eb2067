"""Every option of train_solution.py, declared once, as a field of RunConfig: one run's settings.

A field's type says what the option holds (`| None`: it may be left unset; a Literal: its
choices; PositiveInt and the like: a check); option() gives its help and group in --help,
its [preset] values, what --from_resume 1 does with it (ON_RESUME) and whether it is part
of the recipe that identifies a reference run (course.reference). The parser, the resume's
rules and the recipe are derived from here: a new option is one new field.

course.cli fills the config once, before the run starts: the command line, the cpu or gpu
preset for [preset] options left out, and on a resume the saved plan. It is frozen: a field
has the same value at the first step and the last.
"""

# No `from __future__ import annotations`: course.cli.build_parser reads the fields' types.
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Literal

from course.corpus import TOKENIZERS
from course.distributed import PARALLEL_MODES
from course.run_folder import RESUME_FILE
from course.tracking import BACKENDS
from model import CHOICES, GPTConfig

# What each option does to a run continued with --from_resume 1 (docs/faq.md: "Stopping
# and resuming"). tests/test_cli.py walks every option of --help through a resume.
PLAN = "refused when changed: part of the saved plan"
SPLIT = (
    "applied where the global batch (batch size × accumulation × processes) stays the saved one: each "
    "step reads the same windows, shared out anew (a note says so); refused where it changes"
)
MODEL = "refused when it changes the saved model's config"
DATA = "refused when it changes the saved run's data (tokenizer or content)"
NEW_LR = "applied: the rest of the schedule keeps its shape at the new learning rate (a note says so)"
LENGTH = "applied: the run trains on to the new length; the schedule keeps the saved shape"
# (dtype: a run saved without float16 and resumed in it gets a fresh GradScaler.)
FROM_HERE = "applied from the resume on: read at every step, evaluation or save, never saved in the state"
HOW_IT_STARTS = "where the run is and how it starts"
NO_RUN = "no run: grades the TODOs or prints a hint"
TRACKED_RUN = (
    "applied from the resume on: 1 continues the W&B or SwanLab run saved in the checkpoint (or starts "
    "one), 0 logs to none; the saved run's id stays in the checkpoint"
)
NAMES_THE_TRACKED_RUN = (
    "refused when it names another tracked run than the one saved in the checkpoint (its W&B or SwanLab "
    "run id is continued); applied while the run has none"
)

# The checks that course.cli.check_options makes, in the words of its error; a float with
# one must also be finite (nan passes every comparison).
POSITIVE, NOT_NEGATIVE, FINITE = "must be positive", "must not be negative", "must be a finite number"
PositiveInt, PositiveFloat = Annotated[int, POSITIVE], Annotated[float, POSITIVE]
NonNegativeInt, NonNegativeFloat = Annotated[int, NOT_NEGATIVE], Annotated[float, NOT_NEGATIVE]
FiniteFloat = Annotated[float, FINITE]
OnOff = Literal[0, 1]
# Literal[a tuple] is the Literal of its values: a choice is listed where it is defined
# (TOKENIZERS, model.CHOICES, PARALLEL_MODES, tracking.BACKENDS).

MAX_SAMPLE_TOKENS = 10_000  # a sample at every evaluation; longer ones would stall the run
# Validation tokens per evaluation, chosen with tools/eval_budget.py: how close each budget
# comes to the whole split is in docs/reference-runs.md ("How the validation loss is measured").
EVAL_TOKENS = 196_608


def option(help: str, on_resume: str, *, recipe=False, cpu=None, gpu=None, group=None, **parser_options):
    """A field that is an option. recipe: it changes what is trained; not where files go, how
    often to report or how the work is spread (compiling, FSDP and recomputing activations
    change the rounding of some sums, not the run), nor what the recipe holds as the numbers
    it decides (the data's content, the schedule). cpu, gpu: a [preset] option's values;
    group: the group of --help that starts here; parser_options go to add_argument."""
    preset = {"cpu": cpu, "gpu": gpu} if cpu is not None else None
    declared = dict(help=help, on_resume=on_resume, group=group, recipe=recipe, preset=preset)
    return field(metadata={**declared, "parser_options": parser_options})


# The presets are defaults that depend on the hardware. cpu: a 0.8M-parameter model that
# learns Shakespeare's look in about the wall time of nanoGPT's CPU recipe
# (docs/reference-runs.md gives it for each kind of CPU), on 2.5M tokens: windows that each
# come once, from all the plays (an epoch is 2,222 steps). gpu: nanoGPT's shakespeare-char
# scale (10.7M parameters), a few minutes on one GPU.
@dataclass(frozen=True)
class RunConfig:
    data_path: str | None = option(
        'a .txt file or MiniMind .jsonl ({"text": ...} per line); default: Shakespeare', DATA, group="data"
    )
    data_dir: str | None = option(
        "where prepared corpora are kept (default: the data/ folder here)", HOW_IT_STARTS
    )
    tokenizer: Literal[TOKENIZERS] = option(
        "char: one token per character; gpt2: GPT-2's BPE via tiktoken", DATA, recipe=True, default="char"
    )
    hidden_size: PositiveInt = option(
        "embedding size (n_embd)",
        MODEL,
        recipe=True,
        cpu=128,
        gpu=384,
        group="model (MiniMind names; GPTConfig field in brackets)",
    )
    num_hidden_layers: PositiveInt = option("Transformer blocks (n_layer)", MODEL, recipe=True, cpu=4, gpu=6)
    num_attention_heads: PositiveInt = option("heads per layer (n_head)", MODEL, recipe=True, cpu=4, gpu=6)
    max_seq_len: PositiveInt = option(
        "context length in tokens (block_size)", MODEL, recipe=True, cpu=64, gpu=256
    )
    dropout: FiniteFloat = option("dropout probability", MODEL, recipe=True, cpu=0.0, gpu=0.2)
    use_moe: OnOff = option(
        "1: mixture-of-experts MLPs (4 experts, top-2 routing, load-balancing loss)",
        MODEL,
        recipe=True,
        default=0,
    )
    position: Literal[CHOICES["position"]] = option(
        "learned: GPT-2's position table; rope: rotary position embeddings",
        MODEL,
        recipe=True,
        default=GPTConfig.position,
        group="recipe (GPT-2's 2019 piece or its modern replacement; see tools/results/README.md)",
    )
    norm: Literal[CHOICES["norm"]] = option(
        "layer: LayerNorm; rms: RMSNorm", MODEL, recipe=True, default=GPTConfig.norm
    )
    mlp: Literal[CHOICES["mlp"]] = option(
        "gelu: GPT-2's MLP; relu2: squared ReLU; swiglu: LLaMA's gated MLP",
        MODEL,
        recipe=True,
        default=GPTConfig.mlp,
    )
    qk_norm: OnOff = option(
        "1: RMS-normalise queries and keys", MODEL, recipe=True, default=int(GPTConfig.qk_norm)
    )
    zero_init: OnOff = option(
        "1: output projections start at zero", MODEL, recipe=True, default=int(GPTConfig.zero_init)
    )
    tie_weights: OnOff = option(
        "1: lm_head shares the token embedding's matrix",
        MODEL,
        recipe=True,
        default=int(GPTConfig.tie_weights),
    )
    optimizer: Literal["adamw", "muon"] = option(
        "adamw: AdamW everywhere; muon: Muon for the blocks' matrices, AdamW for the rest",
        PLAN,
        recipe=True,
        default="muon",
    )
    muon_lr: PositiveFloat = option(
        "Muon's peak LR (same warmup and cosine as the others)", PLAN, recipe=True, default=0.02
    )
    epochs: PositiveFloat | None = option(
        "passes over the training split; sets the number of steps unless --max_steps is given",
        LENGTH,
        group="training",
    )
    max_steps: PositiveInt | None = option(
        "optimizer steps to train (wins over --epochs)", LENGTH, cpu=1200, gpu=5000
    )
    dataset_mode: Literal["blocks", "documents"] = option(
        "blocks: the corpus packed into max_seq_len windows (no padding); documents: MiniMind's "
        "PretrainDataset, one padded document per sequence (needs a .jsonl --data_path)",
        PLAN,
        recipe=True,
        default="blocks",
    )
    max_train_tokens: NonNegativeInt = option(
        "train on N tokens of the training split, as windows spread evenly over it (0 = all: "
        "with the cpu preset an epoch is 2,222 steps; 1000000 makes it 488)",
        PLAN,
        recipe=True,
        cpu=0,
        gpu=0,
    )
    batch_size: PositiveInt = option("sequences per micro-batch", SPLIT, recipe=True, cpu=32, gpu=64)
    accumulation_steps: PositiveInt = option(
        "micro-batches per optimizer step (gradient accumulation)", SPLIT, recipe=True, default=1
    )
    learning_rate: PositiveFloat = option("peak learning rate", NEW_LR, recipe=True, cpu=2e-3, gpu=1e-3)
    min_lr: NonNegativeFloat | None = option("final LR of the cosine (default: learning_rate / 10)", NEW_LR)
    warmup_steps: NonNegativeInt | None = option("linear warmup steps (default: 10%% of the steps)", PLAN)
    weight_decay: NonNegativeFloat = option(
        "AdamW weight decay on 2-D weights", PLAN, recipe=True, default=0.1
    )
    beta2: float = option(
        "AdamW's decay of its squared-gradient average (nanoGPT: 0.99)", PLAN, recipe=True, default=0.95
    )
    grad_clip: NonNegativeFloat = option(
        "clip the gradient norm to this (0 = off)", FROM_HERE, recipe=True, default=1.0
    )
    seed: int = option("random seed (weights, data order, dropout)", PLAN, recipe=True, default=1337)
    device: str = option("auto | cpu | cuda | cuda:N | mps", FROM_HERE, default="auto", group="system")
    dtype: str = option("auto | float32 | bfloat16 | float16 (mixed precision)", FROM_HERE, default="auto")
    preset: Literal["auto", "cpu", "gpu"] = option(  # cpu or gpu once resolved
        "defaults for the [preset] options; auto: gpu on CUDA, else cpu", MODEL, default="auto"
    )
    use_compile: OnOff = option("1: torch.compile the model", FROM_HERE, default=0)
    num_workers: NonNegativeInt = option(
        "DataLoader worker processes (at most the CPU cores)", FROM_HERE, cpu=0, gpu=2
    )
    parallel: Literal[PARALLEL_MODES] = option(
        "under torchrun: ddp: a whole copy of the model per process; fsdp: shard weights, gradients "
        "and optimizer state over the processes (FSDP2, for a model that outgrows one device)",
        SPLIT,
        default="ddp",
    )
    activation_checkpointing: OnOff = option(
        "1: recompute each Block's activations in the backward pass instead of storing them "
        "(less memory, about a third more compute)",
        FROM_HERE,
        default=0,
    )
    profile: NonNegativeInt = option(
        "N > 0: record N training steps with torch.profiler into save_dir/profile.pt.trace.json "
        "(Perfetto, TensorBoard) and print where their time goes",
        FROM_HERE,
        default=0,
        metavar="N",
    )
    save_dir: str = option(
        "checkpoints, metrics, plot and samples go here; one run per folder (see --overwrite)",
        HOW_IT_STARTS,
        default="out",
        group="output",
    )
    log_interval: PositiveInt = option("steps between log lines", FROM_HERE, default=10)
    eval_interval: PositiveInt = option("steps between evaluations and samples", FROM_HERE, cpu=300, gpu=500)
    eval_tokens: NonNegativeInt = option(
        "validation tokens per evaluation, as windows spread evenly over the split: the same windows "
        "whatever the batch size or the number of processes (0: the whole split)",
        FROM_HERE,
        recipe=True,
        default=EVAL_TOKENS,
    )
    eval_iters: PositiveInt | None = option(  # as given: eval_tokens holds what it stands for
        "the budget as nanoGPT gives it: N batches of batch_size x max_seq_len tokens (sets --eval_tokens)",
        FROM_HERE,
    )
    save_interval: PositiveInt = option("steps between checkpoints", FROM_HERE, default=500)
    from_resume: OnOff = option(
        f"1: continue the run saved in save_dir/{RESUME_FILE}", HOW_IT_STARTS, default=0
    )
    overwrite: OnOff = option(
        "1: replace the run saved in save_dir (its files stay until this run's first checkpoint); "
        "0: refuse a save_dir that holds a run",
        HOW_IT_STARTS,
        default=0,
    )
    from_weight: str = option(
        "start from the weights in this .pt file", HOW_IT_STARTS, recipe=True, default="none"
    )
    prompt: str = option("text that samples start from (default: a new document)", FROM_HERE, default="")
    sample_tokens: NonNegativeInt = option(
        f"tokens per sample (at most {MAX_SAMPLE_TOKENS:,}; 0: no samples)", FROM_HERE, default=300
    )
    tensorboard: OnOff = option(
        "1: TensorBoard event files in save_dir/tensorboard/ (`tensorboard --logdir out`); 0: none",
        FROM_HERE,
        default=1,
        group="watching the run (course/tracking.py, docs/watching.md)",
    )
    use_wandb: OnOff = option(
        '1: log to W&B too (pip install -e ".[wandb]"; offline without an account), as MiniMind does',
        TRACKED_RUN,
        default=0,
    )
    wandb_backend: Literal[tuple(BACKENDS)] = option(
        "wandb: Weights & Biases; swanlab: SwanLab (MiniMind's choice, reachable from China)",
        NAMES_THE_TRACKED_RUN,
        default="wandb",
    )
    wandb_project: str = option("the W&B or SwanLab project", NAMES_THE_TRACKED_RUN, default="pretrain-a-gpt")
    wandb_run_name: str | None = option(
        "the tracked run's name (default: one the tracker makes up)", NAMES_THE_TRACKED_RUN
    )
    # The options given on the command line: a resume tells them from those left out.
    options_given: tuple[str, ...]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)

    def tracked_run_options(self) -> dict:
        """The options that name the W&B or SwanLab run, which a resume continues."""
        return {name: getattr(self, name) for name in options_with(NAMES_THE_TRACKED_RUN)}


@dataclass(frozen=True)
class ExerciseOptions:
    """The exercise file's own options: they grade or give a hint, and start no run."""

    test: str | None = option(
        "grade the TODOs of this file with pytest and print a scoreboard (or one TODO: --test 2b)",
        NO_RUN,
        nargs="?",
        const="all",
        metavar="TODO",
        group="exercises",
    )
    hint: str | None = option(
        "print the next hint for a TODO: the idea, then the API, then pseudocode", NO_RUN, metavar="TODO"
    )


OPTIONS = tuple(f for f in fields(RunConfig) + fields(ExerciseOptions) if f.metadata)  # --help's order


def read_type(annotation) -> tuple[type, tuple | None, str | None]:
    """A field's type as what the parser converts the typed text to (int, float or str),
    the choices (a Literal's values) and the check (PositiveInt's and the like). `X | None`
    is X: an option that may be left unset."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0]), typing.get_args(annotation), None
    if typing.get_origin(annotation) is Annotated:
        kind, check = typing.get_args(annotation)
        return kind, None, check
    return annotation, None, None


def options_with(*on_resume: str) -> tuple[str, ...]:
    return tuple(f.name for f in OPTIONS if f.metadata["on_resume"] in on_resume)


ON_RESUME = {f.name: f.metadata["on_resume"] for f in OPTIONS}
# The saved plan (course.cli.run_plan): the LR schedule, the order of the batches and the
# optimizer's settings (which load_state_dict would otherwise quietly restore).
PLAN_OPTIONS = options_with(PLAN, SPLIT, NEW_LR)
SPLIT_OPTIONS = options_with(SPLIT)  # how a step is split over the processes
RESUME_MAY_CHANGE = options_with(NEW_LR)  # lowering the LR after the loss diverged is the usual fix
PRESETS = {
    preset: {f.name: f.metadata["preset"][preset] for f in OPTIONS if f.metadata["preset"]}
    for preset in ("cpu", "gpu")
}
CHECKS = {f.name: read_type(f.type)[2] for f in OPTIONS if read_type(f.type)[2]}
NOT_IN_RECIPE = frozenset(f.name for f in fields(RunConfig) if not f.metadata.get("recipe"))
