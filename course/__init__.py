"""The machinery around the course's exercises: what a real trainer needs but is not the lesson.

The exercise files hold the ideas of pretraining; here, one module per concern: `errors`
(one-line messages, exit codes), `config` (every option, declared once), `cli` (the command
line, presets, checks), `corpus` (fetch and tokenize a corpus), `batches` (datasets, the
resumable batch order, validation batches), `devices` and `distributed` (device, number
type, DDP or FSDP), `run_folder` (one run per folder: claim, stage, commit, its files),
`shards` (FSDP's checkpoints), `checkpoints` (random states, the GradScaler, --from_weight),
`logbook` and `tracking` (metrics, plot, samples, TensorBoard), `reference` (the course's
reference runs), `guards` (Ctrl+C, SIGTERM, the NaN guard), `open_todos` (what the exercise
files do while a TODO is open), `todos` (the TODO catalog and the hints behind `--hint`),
`sample` (a prompt in, the model's continuation out). Read it to see how a real trainer does
these things; the course does not need it.
"""
