"""FSDP2 (--parallel fsdp) on the CPU with gloo: two processes that each hold half of
every weight, gradient and optimizer moment train like one process with the whole
batch (packed blocks with activation checkpointing and Muon, on two "machines" of one
process each; padded documents with AdamW; with accumulation); Muon's step, each
process orthogonalising its share of the matrices, is one process's step, at 2 and 3
processes; a run killed with SIGKILL resumes bit-identically from its sharded (DCP)
checkpoint; its checkpoint of two processes goes on, with the same global batch, on one
FSDP process, in one plain process, and from there on two FSDP processes again, to the
weights of the straight run; a changed global batch is refused in one line; and an
evaluation with its sample gathers the weights once, not once per token, and stays out
of --profile's training steps; and the model is built sharded, never whole in one
process, with the weights of one process."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL, VERSE, background_job, run_checked
from test_ddp import (
    ARGS,
    assert_same_weights,
    documents_args,
    kill_after_step_4,
    torchrun,
    weights,
    write_documents,
)

import train_solution as train
from course import cli
from course.corpus import prepared_dir, read_meta
from course.distributed import MAIN_WORK_TIMEOUT, STEP_TIMEOUT, ProcessGroup
from data_solution import tokenizer_from_meta

FSDP = ["--parallel", "fsdp"]
# Few evaluations and no samples: under FSDP every process takes part in each forward of
# them, and these runs are about the training. float32: bfloat16 (the default on CPUs with
# bfloat16 instructions) rounds a batch of 8 and four micro-batches of 2 differently.
QUIET = ["--dtype", "float32", "--eval_interval", "100", "--sample_tokens", "0"]
# Blocks, Muon (the default optimizer), activation checkpointing.
BLOCKS = [
    *ARGS,
    *QUIET,
    *FSDP,
    "--batch_size",
    "2",
    "--accumulation_steps",
    "2",
    "--activation_checkpointing",
    "1",
]


def blocks_args(workdir: Path, run: str) -> list[str]:
    """8 steps of two FSDP processes with 2 micro-batches of 2 each, a checkpoint every 4."""
    return [*BLOCKS, "--data_path", str(workdir / "verse.txt"),
            "--data_dir", str(workdir / f"prepared_{run}"), "--save_dir", str(workdir / run)]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(args: list[str]) -> None:
    """Two torchrun launchers of one process each, as two machines would start them
    (--nnodes 2, --node_rank, a rendezvous endpoint), here both on this machine."""
    port = free_port()
    torchrun_node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                     "--master_addr", "127.0.0.1", "--master_port", str(port)]  # fmt: skip
    output = dict(cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    nodes = [[*torchrun_node, "--node_rank", str(node), "train_solution.py", *args] for node in range(2)]
    launchers = [subprocess.Popen(node, **output) for node in nodes]
    for launcher in launchers:
        _, err = launcher.communicate()
        assert launcher.returncode == 0, f"a two-machine run failed:\n{err[-3000:]}"


@background_job("fsdp", seconds=36)
def fsdp_runs(workdir: Path) -> None:
    """Two FSDP processes on blocks: straight to step 8 on two 'machines' of one process
    each, and on one machine killed after the checkpoint of step 4, then resumed to step
    8; and on padded documents, with AdamW. The checkpoint of step 4 also goes on on
    other processes (resharded_runs)."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    write_documents(workdir / "documents.jsonl")
    documents = [*documents_args(workdir / "documents.jsonl", workdir, "fsdp_documents", 2, 2), *QUIET, *FSDP,
                 "--optimizer", "adamw"]  # fmt: skip
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(two_machines, blocks_args(workdir, "fsdp_straight")),
                pool.submit(run_checked, torchrun(documents))]  # fmt: skip
        kill_after_step_4(blocks_args(workdir, "fsdp_resumed"), workdir)
        for run in ("fsdp_one", "fsdp_plain_fsdp"):  # its checkpoint of step 4, before the resume moves on
            shutil.copytree(workdir / "fsdp_resumed", workdir / run)
        jobs.append(pool.submit(resharded_runs, workdir))
        run_checked(torchrun([*blocks_args(workdir, "fsdp_resumed"), "--from_resume", "1"]))
        for job in jobs:
            job.result()  # raise if a run failed


def resharded_runs(workdir: Path) -> None:
    """The checkpoint of step 4 of two FSDP processes, batch 2 × 2 micro-batches, goes on
    with the same 8 windows a step: on one FSDP process with 4 micro-batches (torchrun) to
    step 8; and in one plain process with batch 8 to step 6, whose whole-tensor checkpoint
    two FSDP processes take to step 8. What each run prints is kept in its folder."""
    one = torchrun([*blocks_args(workdir, "fsdp_resumed"), "--save_dir", str(workdir / "fsdp_one"),
                    "--from_resume", "1", "--accumulation_steps", "4"])  # fmt: skip
    one[one.index("--nproc_per_node=2")] = "--nproc_per_node=1"
    (workdir / "fsdp_one" / "said.log").write_text(run_checked(one).stdout)
    plain_fsdp = [*blocks_args(workdir, "fsdp_resumed"), "--save_dir", str(workdir / "fsdp_plain_fsdp"),
                  "--from_resume", "1"]  # fmt: skip
    plain = run_checked([sys.executable, "train_solution.py", *one_process(plain_fsdp), "--parallel", "ddp",
                         "--max_steps", "6"])  # fmt: skip
    again = run_checked(torchrun(plain_fsdp))
    (workdir / "fsdp_plain_fsdp" / "said.log").write_text(plain.stdout + again.stdout)


def one_process(args: list[str]) -> list[str]:
    """The same run in one process with the whole batch: no FSDP, no accumulation (the
    options given last win)."""
    return [*(a for a in args if a not in FSDP), "--batch_size", "8", "--accumulation_steps", "1"]


@pytest.mark.background("fsdp")
def test_two_fsdp_processes_train_like_one_with_the_whole_batch(background, tmp_path):
    """Sharded weights, gradients reduce-scattered, Muon's matrices shared out,
    gradient sync off for all but the last micro-batch, activation checkpointing: the
    weights after 8 steps on blocks (6 on padded documents) are those of one process
    with batch 8."""
    (tmp_path / "verse.txt").write_text(VERSE * 60)
    assert train.main(one_process(blocks_args(tmp_path, "one"))) == 0
    assert_same_weights(weights(tmp_path / "one"), weights(background / "fsdp_straight"),
                        "2 FSDP processes (on two machines) × batch 2 × 2 micro-batches, activation "
                        "checkpointing on, should train like 1 process × batch 8", atol=1e-5)  # fmt: skip
    documents = documents_args(background / "documents.jsonl", tmp_path, "one_documents", 8, 1)
    assert train.main([*documents, *QUIET, "--optimizer", "adamw"]) == 0
    assert_same_weights(weights(tmp_path / "one_documents"), weights(background / "fsdp_documents"),
                        "2 FSDP processes × batch 2 × 2 micro-batches should train like 1 process × "
                        "batch 8 on padded documents", atol=1e-5)  # fmt: skip


MUON_PROCESSES = (2, 3)


@background_job("muon_fsdp", seconds=12)
def muon_steps_under_fsdp(workdir: Path) -> None:
    """tests/muon_under_fsdp.py under 2 and 3 processes at once: each writes a report."""
    runs = []
    for processes in MUON_PROCESSES:
        out = workdir / str(processes)
        out.mkdir()
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [sys.executable, *torchrun, "tests/muon_under_fsdp.py", str(out)]
        runs.append(subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, err = run.communicate()
        assert run.returncode == 0, f"tests/muon_under_fsdp.py failed:\n{err[-3000:]}"


@pytest.mark.background("muon_fsdp")
def test_muon_under_fsdp_steps_as_one_process_with_two_all_to_alls_per_shape(background):
    """Each process orthogonalises its share of the matrices of each shape, whole, and the
    rows go back to their shards: three steps give one process's weights (float32), at 2
    processes and at 3 (rows that do not divide, a shard without rows, fewer matrices
    than processes). The collectives: one all-to-all there and one back per shape, not
    an all-gather of every matrix to every process."""
    for processes in MUON_PROCESSES:
        for rank in range(processes):
            report = json.loads((background / str(processes) / f"rank{rank}.json").read_text())
            assert report["difference"] < 1e-6, f"{processes} processes, rank {rank}: {report['difference']}"
            per_step = {"c10d.alltoall_base_": 2 * report["shapes"]}
            assert report["collectives"] == [per_step] * 3, f"{processes} processes: {report['collectives']}"


@pytest.mark.background("fsdp")
def test_a_killed_fsdp_run_resumes_bit_identically_from_its_shards(background):
    """SIGKILLed after the checkpoint of step 4 and resumed, it ends with exactly the
    weights of the straight run (which ran on two 'machines' of one process each).
    (DDP's resume test has dropout on; the random states are saved the same way here.)"""
    resumed = background / "fsdp_resumed"
    checkpoint = torch.load(resumed / "resume.pt", weights_only=True)
    assert checkpoint["step"] == 8 and checkpoint["shards"] == "resume-shards/step8"
    assert "model" not in checkpoint and "optimizer" not in checkpoint, "the shards hold those"
    assert sorted(p.name for p in (resumed / "resume-shards").iterdir()) == ["step8"], "older shards go"
    assert sorted(p.name for p in (resumed / "resume-shards" / "step8").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"], "one file per process, and DCP's index"  # fmt: skip
    straight, after_resume = weights(background / "fsdp_straight"), weights(resumed)
    assert straight.keys() == after_resume.keys()
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), f"{name} differs after the FSDP resume"


@pytest.mark.background("fsdp")
def test_model_pt_of_an_fsdp_run_is_one_plain_file(background):
    """model.pt holds whole tensors gathered from both processes: it loads without
    torch.distributed, into model.py's GPT, for sampling or --from_weight."""
    from course.sample import load_model

    model, _ = load_model(background / "fsdp_resumed" / "model.pt", torch.device("cpu"))
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


NOTE = "note: resumed as {} (saved: fsdp × 2, 2 × 2), the same 8 windows a step: "


@pytest.mark.background("fsdp")
def test_an_fsdp_checkpoint_of_two_processes_goes_on_on_one_with_the_same_global_batch(background):
    """DCP reshards the weights and Muon's and AdamW's moments onto one process, the
    batch stream goes on from the same window (a window seen twice or skipped would move
    the weights by about the learning rate), and a note says it is not bit-identical."""
    said = (background / "fsdp_one" / "said.log").read_text()
    assert said.count("note: resumed as") == 1, said
    assert NOTE.format("fsdp × 1 process(es), batch 2 × 4 micro-batch(es)") in said, said
    assert_same_weights(weights(background / "fsdp_straight"), weights(background / "fsdp_one"),
                        "2 FSDP processes × batch 2 × 2 micro-batches to step 4, then 1 FSDP process "
                        "× batch 2 × 4 micro-batches, should train like 2 throughout", atol=1e-5)  # fmt: skip


@pytest.mark.background("fsdp")
def test_an_fsdp_checkpoint_goes_on_in_a_plain_process_and_back_on_fsdp(background):
    """FSDP's shards read into whole tensors without a process group (a checkpoint with
    the model and optimizer inline), and those shared out over two FSDP processes again."""
    said = (background / "fsdp_plain_fsdp" / "said.log").read_text()
    assert NOTE.format("ddp × 1 process(es), batch 8 × 1 micro-batch(es)") in said, said
    assert (
        "note: resumed as fsdp × 2 process(es), batch 2 × 2 micro-batch(es) (saved: ddp × 1, 8 × 1)" in said
    )
    assert_same_weights(weights(background / "fsdp_straight"), weights(background / "fsdp_plain_fsdp"),
                        "2 FSDP processes to step 4, 1 plain process × batch 8 to step 6, 2 FSDP "
                        "processes to step 8 should train like 2 throughout", atol=1e-5)  # fmt: skip


@pytest.mark.background("fsdp")
def test_a_changed_global_batch_is_refused_in_one_line(background, capsys):
    """One process with the two processes' batch size and accumulation would train on half
    the windows a step: refused, naming the accumulation that keeps the global batch."""
    code = train.main([*blocks_args(background, "fsdp_resumed"), "--from_resume", "1", "--max_steps", "9"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        "error: --batch_size 2 × --accumulation_steps 2 × 1 process(es) is a step of 4 windows, the saved "
        "run's 2 × 2 × 2 = 8: keep the global batch with --accumulation_steps 4"
    ], err


# train_solution.py whose processes count FSDP's all-gathers (dist.all_gather_single, the
# collective FSDP2 gathers each module's shards with) during every evaluation with its
# text sample (validate) and every training step, and write them to rank<N>.json.
COUNT_ALL_GATHERS = f"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
import torch.distributed as dist
import train_solution as train

all_gather_single, gathers, counts = dist.all_gather_single, [0], []

def counted_all_gather(*args, **kwargs):
    gathers[0] += 1
    return all_gather_single(*args, **kwargs)

def counting(function, name):
    def call(*args, **kwargs):
        before = gathers[0]
        result = function(*args, **kwargs)
        counts.append((name, gathers[0] - before))
        return result
    return call

dist.all_gather_single = counted_all_gather
train.validate = counting(train.validate, "validate")
train.train_step = counting(train.train_step, "step")
code = train.main()
save_dir = Path(sys.argv[sys.argv.index("--save_dir") + 1])
(save_dir / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps(counts))
sys.exit(code)
"""
SAMPLE_TOKENS = 300  # what an evaluation samples by default
LAYERS = int(TINY_MODEL[TINY_MODEL.index("--num_hidden_layers") + 1])


@background_job("fsdp_sampling", seconds=10)
def fsdp_sampling_run(workdir: Path) -> None:
    """Two FSDP processes, 4 steps, evaluating (with a sample of 300 tokens) at steps 0,
    1, 2 and 4, and profiling steps 2 and 3, in whose windows the evaluations of steps 1
    and 2 fall."""
    (workdir / "verse.txt").write_text(VERSE * 20)
    driver = workdir / "count_all_gathers.py"
    driver.write_text(COUNT_ALL_GATHERS)
    args = [*TINY_MODEL, *FSDP, "--max_steps", "4", "--eval_interval", "2", "--profile", "2",
            "--sample_tokens", str(SAMPLE_TOKENS), "--data_path", str(workdir / "verse.txt"),
            "--data_dir", str(workdir / "prepared"), "--save_dir", str(workdir / "run")]  # fmt: skip
    run_checked(torchrun(args, str(driver)))


@pytest.mark.background("fsdp_sampling")
def test_an_fsdp_evaluation_gathers_the_weights_once_not_once_per_token(background):
    """Each evaluation and its 300-token sample gather each FSDP module (the Blocks and
    the rest of the model) at most once: a bound independent of the number of tokens,
    where gathering every Block for every token made over 600 at 2 Blocks."""
    for rank in range(2):
        counts = json.loads((background / "run" / f"rank{rank}.json").read_text())
        evaluations = [n for name, n in counts if name == "validate"]
        assert len(evaluations) == 4, counts
        assert all(n <= LAYERS + 1 for n in evaluations), (
            f"rank {rank}: an evaluation with a sample of {SAMPLE_TOKENS} tokens made {evaluations} "
            f"all-gathers; the weights of {LAYERS + 1} FSDP modules should be gathered once each"
        )


@pytest.mark.background("fsdp_sampling")
def test_the_fsdp_profile_holds_training_steps_only(background):
    """The evaluations after steps 1 and 2 fall inside the profiled steps 2 and 3, and
    are left out: the trace holds no sampling, and as many of FSDP's all-gathers as the
    two training steps made."""
    counts = json.loads((background / "run" / "rank0.json").read_text())
    per_step = [n for name, n in counts if name == "step"]
    trace = json.loads((background / "run" / "profile.pt.trace.json").read_text())
    names = [e.get("name", "") for e in trace["traceEvents"]]
    assert "aten::multinomial" not in names, "the evaluations' samples should not be in the profile"
    # FSDP2's own names for its all-gathers: "FSDP::all_gather (transformer.h.0)" for a Block,
    # "FSDP::all_gather" for the root module (not its "FSDP::all_gather_copy_out").
    gathered = [n for n in names if n == "FSDP::all_gather" or n.startswith("FSDP::all_gather (")]
    assert len(gathered) == sum(per_step[1:3]), (
        f"the profile of steps 2 and 3 holds {len(gathered)} FSDP all-gathers, those training "
        f"steps made {per_step[1:3]}"
    )


# Each of two FSDP processes builds three models as train_solution.py does, and reports
# the rise of its peak memory (VmHWM, reset before each build) and the weights (gathered):
# a small one of the other recipe (RoPE, RMSNorm, SwiGLU, QK-norm, zero-initialised
# projections, untied lm_head, MoE); one whose full weights (57 MB in float32) are twice
# one process's shard, from --seed 7; and the small one --from_weight other.pt, which
# rank 0 wrote from one process's model of another seed. It also reports the timeouts of its
# process groups and the groups that the waits for rank 0's corpus preparation used, then
# leaves its process groups, as the training script does.
BUILD_SHARDED = f"""
import dataclasses, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
import torch
import torch.distributed as dist
import train_solution as train
from course import cli
from course.run_folder import save_atomic
from course.distributed import ProcessGroup, full_weights, shut_down

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB

def measured_build(config):
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS")
    model = train.build_model(config, tokenizer, device, group, dtype)
    return model, status("VmHWM") - before

out = Path(sys.argv[1])
group, device, dtype, config = cli.configure(cli.parse_args(sys.argv[2:]))
barriers, barrier = [], dist.barrier  # the group of every barrier while the corpus is prepared
dist.barrier = lambda group=None: barriers.append(group) or barrier(group=group)
_, tokenizer, _, _ = train.load_data(config, group, device)
dist.barrier = barrier
recipe = dict(position="rope", norm="rms", mlp="swiglu", qk_norm=1, zero_init=1, tie_weights=0, use_moe=1)
other = dataclasses.replace(config, **recipe, hidden_size=64, num_hidden_layers=2)
fresh, _ = measured_build(other)  # first: it loads PyTorch's meta kernels (some 30 MB, once)
model, peak = measured_build(config)
if group.is_main:  # one process's model of the other recipe, from another seed
    one = dataclasses.replace(other, parallel="ddp", seed=8)
    source = train.build_model(one, tokenizer, torch.device("cpu"), ProcessGroup(), dtype)
    save_atomic({{"model": source.state_dict(), "model_config": source.config.to_dict(),
                 "tokenizer": tokenizer.meta()}}, out / "other.pt")
group.barrier()
loaded, _ = measured_build(dataclasses.replace(other, from_weight=str(out / "other.pt")))
report = dict(peak=peak, main_waits=barriers == [group.cpu_group],
              timeouts=[g._get_backend(torch.device("cpu")).options._timeout.total_seconds()
                        for g in (dist.group.WORLD, group.cpu_group)])
reports = [None] * group.world_size
dist.all_gather_object(reports, report, group=group.cpu_group)
results = dict(initial=full_weights(model), other=full_weights(fresh), loaded=full_weights(loaded),
               reports=reports)
if group.is_main:
    torch.save(results, out / "results.pt")
del model, fresh, loaded, results  # (their device meshes refer to the process groups)
shut_down()  # as train_solution.py ends: gloo aborts a process that exits still in its groups
"""

# 8 blocks of 384: 14M parameters, whose largest matrix is a 1/16 of a block.
BIG = ["--hidden_size", "384", "--num_hidden_layers", "8", "--num_attention_heads", "4",
       "--max_seq_len", "32", "--seed", "7", "--dtype", "float32", *FSDP]  # fmt: skip


def build_args(workdir: Path) -> list[str]:
    return [*BIG, "--device", "cpu", "--data_path", str(workdir / "verse.txt"),
            "--data_dir", str(workdir / "prepared"), "--save_dir", str(workdir / "run")]  # fmt: skip


@background_job("fsdp_build", seconds=8)
def fsdp_builds(workdir: Path) -> None:
    """The processes of BUILD_SHARDED, on the corpus that they prepare."""
    (workdir / "verse.txt").write_text(VERSE * 60)
    script = workdir / "build_sharded.py"
    script.write_text(BUILD_SHARDED)
    run_checked(torchrun([str(workdir), *build_args(workdir)], script=str(script)))


def one_process_model(args: list[str], **changes) -> dict[str, torch.Tensor]:
    """The weights that one process's build_model gives for `args` (without FSDP) and `changes`."""
    config = cli.run_config(cli.parse_args([a for a in args if a not in FSDP]), torch.device("cpu"))
    prepared = prepared_dir(Path(config.data_path), config.tokenizer, Path(config.data_dir))
    tokenizer = tokenizer_from_meta(read_meta(prepared))  # the corpus that the processes prepared
    model = train.build_model(dataclasses.replace(config, **changes), tokenizer, torch.device("cpu"),
                              ProcessGroup(), torch.float32)  # fmt: skip
    return model.state_dict()


@pytest.mark.background("fsdp_build")
def test_fsdp_builds_its_shards_without_the_whole_model_and_with_the_weights_of_one_process(background):
    """Built on the meta device, sharded, then initialised one parameter at a time: each
    process's memory rises by its shard and about one whole parameter, less than the
    whole model's float32 weights, which building it whole needed (and more); and the
    weights are exactly those of one process, for both recipes, from the same seed."""
    results = torch.load(background / "results.pt", weights_only=True)
    initial = one_process_model(build_args(background))
    whole = 4 * sum(t.numel() for name, t in initial.items() if name != "lm_head.weight")  # tied
    for rank, report in enumerate(results["reports"]):
        assert report["peak"] < whole, (
            f"process {rank}: its memory rose by {report['peak'] / 1e6:.1f} MB while building a model "
            f"of {whole / 1e6:.1f} MB (float32): it held the whole model"
        )
    assert_same_weights(initial, results["initial"], "FSDP's initial model should be one process's", atol=0)
    recipe = dict(position="rope", norm="rms", mlp="swiglu", qk_norm=1, zero_init=1, tie_weights=0, use_moe=1)
    other = one_process_model(build_args(background), **recipe, hidden_size=64, num_hidden_layers=2)
    assert_same_weights(other, results["other"], "FSDP's initial model of the other recipe", atol=0)


@pytest.mark.background("fsdp_build")
def test_fsdp_from_weight_loads_a_whole_model_pt_into_its_shards(background):
    """--from_weight under FSDP: each process copies its shard of every tensor of model.pt
    (of one process, another seed): gathered, they are the file's weights."""
    saved = torch.load(background / "other.pt", weights_only=True)["model"]
    loaded = torch.load(background / "results.pt", weights_only=True)["loaded"]
    assert_same_weights(saved, loaded, "--from_weight under FSDP should load model.pt", atol=0)
    fresh = torch.load(background / "results.pt", weights_only=True)["other"]
    assert not torch.equal(saved["lm_head.weight"], fresh["lm_head.weight"]), "another seed, other weights"


@pytest.mark.background("fsdp_build")
def test_slow_work_of_rank_0_is_waited_for_on_gloo_with_the_long_timeout(background):
    """The training's collectives time out after STEP_TIMEOUT; while the first process
    prepares the corpus, the others wait in a barrier of the gloo group, whose timeout
    (MAIN_WORK_TIMEOUT, hours) leaves rank 0 the time that a large corpus needs."""
    assert STEP_TIMEOUT < MAIN_WORK_TIMEOUT
    for report in torch.load(background / "results.pt", weights_only=True)["reports"]:
        assert report["timeouts"] == [STEP_TIMEOUT.total_seconds(), MAIN_WORK_TIMEOUT.total_seconds()]
        assert report["main_waits"], "the wait for the corpus should be one barrier on the gloo group"
