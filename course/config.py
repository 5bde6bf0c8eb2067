"""One run's settings: every option of the command line, resolved, in one frozen object.

course.cli builds it once, before the run starts, from three sources in this order:

    the command line   what was typed (train_solution.py --help lists every option)
    the preset         the cpu or gpu preset's value for each [preset] option left out
    the saved plan     on --from_resume 1, the stopped run's schedule and batches

Everything after that reads fields by name from it and cannot change it: a field
has the same value at the first step and the last. The saved plan of a resume
checkpoint (course.cli.run_plan) is a subset of its fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class RunConfig:
    # data
    data_path: str | None  # None: Shakespeare's plays
    data_dir: str | None  # where prepared corpora are kept; None: data/
    tokenizer: str
    # model (MiniMind's names)
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_seq_len: int
    dropout: float
    use_moe: int
    # recipe
    position: str
    norm: str
    mlp: str
    qk_norm: int
    zero_init: int
    tie_weights: int
    optimizer: str
    muon_lr: float
    # training
    epochs: float | None  # None: max_steps decides
    max_steps: int | None  # None: epochs decides
    dataset_mode: str
    max_train_tokens: int
    batch_size: int
    accumulation_steps: int
    learning_rate: float
    min_lr: float | None  # None: learning_rate / 10
    warmup_steps: int | None  # None: 10% of the steps
    weight_decay: float
    beta2: float
    grad_clip: float
    seed: int
    # system
    device: str
    dtype: str
    preset: str  # cpu or gpu, never auto
    use_compile: int
    num_workers: int
    parallel: str
    activation_checkpointing: int
    profile: int
    # output
    save_dir: str
    log_interval: int
    eval_interval: int
    eval_tokens: int  # 0: the whole validation split
    eval_iters: int | None  # as given, if it was: eval_tokens holds what it stands for
    save_interval: int
    from_resume: int
    overwrite: int
    from_weight: str
    prompt: str
    sample_tokens: int
    # tracking (course.tracking)
    tensorboard: int
    use_wandb: int
    wandb_backend: str
    wandb_project: str
    wandb_run_name: str | None  # None: the tracker names the run
    # the options given on the command line (a resume tells them from those left out)
    options_given: tuple[str, ...]

    @classmethod
    def field_names(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    def to_dict(self) -> dict:
        return asdict(self)
