"""Talk to a trained model: a prompt in, its continuation out.

`python -m course.sample out/best.pt --prompt "ROMEO:"` (docs/commands.md has the options) reads a
run's weights and the tokenizer saved with them; a prompt longer than the context is refused, not cut.
"""

from __future__ import annotations

import sys
import unicodedata
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser, Namespace
from contextlib import suppress
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import from the repository, not from course/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

from course.devices import resolve_device  # noqa: E402
from course.errors import DataError, OneLineErrorParser, UsageError  # noqa: E402
from course.run_folder import WEIGHTS_KEYS, load_checkpoint  # noqa: E402
from data_solution import Tokenizer, tokenizer_from_meta  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# Characters a prompt often has that a corpus spells otherwise (typographic quotes, dashes).
LOOKALIKES = {"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "..."}


def build_parser() -> ArgumentParser:
    p = OneLineErrorParser(description=__doc__.splitlines()[0], formatter_class=ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="model.pt, best.pt or resume.pt of a run")
    p.add_argument("--prompt", default="", help="the text to continue (empty: the start of a new document)")
    p.add_argument("--max_new_tokens", type=int, default=300, help="tokens to add to the prompt")
    p.add_argument("--num_samples", type=int, default=1, help="continuations of the same prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="<1 sharper, >1 flatter, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="keep the k most likely tokens (0: all)")
    top_p = "keep the most likely tokens up to this mass (1: all)"
    p.add_argument("--top_p", type=float, default=1.0, help=top_p)
    p.add_argument("--seed", type=int, default=1337, help="the same seed gives the same samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    interactive = "read prompts from the keyboard until an empty line"
    p.add_argument("--interactive", action="store_true", help=interactive)
    return p


def check_options(args: Namespace) -> None:
    allowed = {
        "max_new_tokens": (1 <= args.max_new_tokens <= 100_000, "between 1 and 100,000"),
        "num_samples": (1 <= args.num_samples <= 1000, "between 1 and 1,000"),
        "temperature": (0 <= args.temperature <= 100, "between 0 (greedy) and 100"),  # also refuses nan
        "top_k": (args.top_k >= 0, "0 (all tokens) or positive"),
        "top_p": (0 < args.top_p <= 1, "in (0, 1]"),
        "seed": (0 <= args.seed < 2**63, "between 0 and 2**63 - 1"),
    }
    for name, (ok, rule) in allowed.items():
        if not ok:
            raise UsageError(f"--{name} must be {rule}, got {getattr(args, name)}")


def load_model(path: Path, device: torch.device) -> tuple[GPT, Tokenizer]:
    """The run's model in eval mode (dropout off) and the tokenizer it was trained with."""
    if not path.is_file():
        raise UsageError(
            f"{path}: no such file; a run writes model.pt, best.pt and resume.pt in its --save_dir"
        )
    weights = load_checkpoint(path, "checkpoint", needs=())  # a file torch can read, or one line
    missing = [key for key in WEIGHTS_KEYS if key not in weights]
    if missing:  # e.g. a resume.pt that a half-done TODO 8 wrote
        raise UsageError(
            f"{path} has no {', '.join(missing)}: sample from a run's model.pt or best.pt "
            "(or a resume.pt written once TODO 8 is done)"
        )
    try:
        model = GPT(GPTConfig(**weights["model_config"]))
        model.load_state_dict(weights["model"])
        tokenizer = tokenizer_from_meta(weights["tokenizer"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:  # a model this script did not save
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: its weights do not fit model.py's GPT ({first_line})") from None
    return model.to(device).eval(), tokenizer


def prompt_ids(prompt: str, tokenizer: Tokenizer, block_size: int) -> list[int]:
    """The prompt's tokens (an end-of-text token for an empty prompt: a new document)."""
    if not prompt:
        return [tokenizer.eot_id]
    try:
        ids = tokenizer.encode(prompt)
    except DataError as err:
        raise UsageError(f"--prompt: {err}{nearest_fix(prompt, tokenizer)}") from None
    if len(ids) > block_size:
        raise UsageError(
            f"--prompt is {len(ids)} tokens, longer than the model's context of {block_size}: it would "
            f"see only the last {block_size}; give a shorter prompt"
        )
    return ids


def nearest_fix(prompt: str, tokenizer: Tokenizer) -> str:
    """For a character outside a char vocabulary: the one it most likely stands for (a straight quote
    for a curly one, the letter without its accent, the other case), or that it must go."""
    known = set(getattr(tokenizer, "chars", ""))
    if not known:
        return ""
    for ch in dict.fromkeys(prompt):
        if ch in known:
            continue
        base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
        for candidate in (LOOKALIKES.get(ch, ""), base, ch.swapcase()):
            if candidate and all(c in known for c in candidate):
                return f"; write {candidate!r} for {ch!r}"
        return f"; leave out {ch!r}: the training text never has it"
    return ""


@torch.no_grad()
def continuations(model: GPT, ids: list[int], args: Namespace, device: torch.device) -> list[list[int]]:
    """args.num_samples continuations of the prompt's ids, drawn in one batch."""
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    top_k = args.top_k or None  # 0: all tokens
    out = model.generate(
        idx, args.max_new_tokens, temperature=args.temperature, top_k=top_k, top_p=args.top_p
    )
    return [row[len(ids) :].tolist() for row in out]


def show(prompt: str, model: GPT, tokenizer: Tokenizer, args: Namespace, device: torch.device) -> None:
    ids = prompt_ids(prompt, tokenizer, model.config.block_size)
    for i, new in enumerate(continuations(model, ids, args, device)):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(prompt + tokenizer.decode(new), flush=True)


def interact(model: GPT, tokenizer: Tokenizer, args: Namespace, device: torch.device) -> None:
    """Prompts from the keyboard until an empty line or the end of the input (Ctrl+D); a prompt the
    model cannot read gets its one-line reason, and the next one is asked for."""
    print("type a prompt and press Enter (an empty line ends)", file=sys.stderr)
    with suppress(EOFError):
        for prompt in iter(lambda: input("> "), ""):
            try:
                show(prompt, model, tokenizer, args, device)
            except UsageError as err:
                print(f"error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        device = resolve_device(args.device)
        model, tokenizer = load_model(args.checkpoint, device)
        torch.manual_seed(args.seed)
        if args.interactive:
            interact(model, tokenizer, args, device)
        else:
            show(args.prompt, model, tokenizer, args, device)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
