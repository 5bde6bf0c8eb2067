"""The machinery around the course's exercises.

The files a learner works in (`data_solution.py`, `train_solution.py` and their
exercise twins) hold the ideas of pretraining: tokens, windows, the schedule, the
training step, evaluation, checkpoints and the loop. Everything a real trainer also
needs, but that is not the lesson, lives here, one module per concern:

- `errors`: the exceptions that end a run with a one-line message and an exit code.
- `cli`: the command line: options, presets per device, checks, exit codes.
- `corpus`: fetching the default corpus and tokenizing any corpus to token files.
- `batches`: the datasets of a run, the resumable order of the training batches,
  and the fixed validation batches.
- `devices`: which device and number type to train in, and the GPU's peak FLOP/s.
- `distributed`: one process or several under torchrun (DDP), and wrapping the model.
- `run_folder`: one run per folder, and its checkpoint files: atomic and checksummed.
- `checkpoints`: random states, the GradScaler on a resume, and --from_weight.
- `logbook`: the metrics file, the plot, text samples, the progress bar, throughput.
- `guards`: Ctrl+C and SIGTERM that save before stopping, and the NaN guard.
- `open_todos`: what the exercise files do while a TODO is still open.
- `todos`: the TODO catalog and the layered hints behind `--hint`.

Read it to see how a real trainer handles these things; you do not need it to do the
course.
"""
