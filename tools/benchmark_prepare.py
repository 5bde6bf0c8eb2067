"""Streaming preparation benchmark: tokenizing large MiniMind .jsonl files.

    python tools/benchmark_prepare.py                 # 100 MB and 1 GB
    python tools/benchmark_prepare.py --sizes 10 100  # other sizes, in MB
    python tools/benchmark_prepare.py --baseline ../old-checkout   # and the same with older code

Generates a synthetic .jsonl corpus of each size (English-like text in documents of
a few hundred words, deterministic), prepares it with the GPT-2 tokenizer in a child
process, and prints throughput (MB/s, tokens/s) and the child's peak memory (RSS).
Peak memory should stay flat as the file grows: the file is read line by line and
tokens are written as they are produced. Then it prepares the same file again and
times that second call: what every later run pays to reuse the prepared corpus (it
hashes the source file and checks the token files against their checksums).
With --baseline, a checkout of older code prepares the same file too, alternating.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when what if will more no so said who can
time king lord love night heart sweet death world life fair honour blood crown sword grace speak hand
"""
WORDS = SAMPLE.split()


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w") as f:
        while written < target:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 600))).capitalize() + "."
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            written += len(line)


CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from course import corpus
start = time.perf_counter()
out = corpus.prepare("gpt2", Path(sys.argv[2]), Path(sys.argv[3]))
meta = corpus.read_meta(out)
prepared = time.perf_counter()
corpus.prepare("gpt2", Path(sys.argv[2]), Path(sys.argv[3]))  # a later run: reuse
print(prepared - start, meta["train_tokens"] + meta["val_tokens"], time.perf_counter() - prepared)
"""


def benchmark(megabytes: int, work: Path, roots: dict[str, Path]) -> None:
    corpus = work / f"synthetic_{megabytes}mb.jsonl"
    write_corpus(corpus, megabytes)
    size_mb = corpus.stat().st_size / 1e6
    for name, root in roots.items():
        prepared = work / f"prepared_{megabytes}_{name}"
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), str(corpus), str(prepared)],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds, tokens, reuse = result.stdout.split()
        seconds, tokens, reuse = float(seconds), int(tokens), float(reuse)
        # ru_maxrss of the children is in KiB on Linux; the largest child so far is this one.
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"{name:>8}  {size_mb:6.0f} MB  {seconds:7.1f} s  {size_mb / seconds:6.1f} MB/s  "
            f"{tokens / seconds:>11,.0f} tokens/s  {tokens:>13,} tokens  peak RSS {peak_mb:6.0f} MB  "
            f"reuse {reuse:5.2f} s",
            flush=True,
        )
        shutil.rmtree(prepared)
    corpus.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="corpus sizes in MB")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of older code to prepare the same files with"
    )
    args = parser.parse_args()
    roots = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        for megabytes in sorted(args.sizes):  # smallest first: peak RSS is a running maximum
            benchmark(megabytes, Path(tmp), roots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
