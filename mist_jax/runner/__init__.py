"""The class-incremental run: per task, MIST tunes the backbone, the learner learns the task,
the run evaluates and checkpoints (``train.Run``); its config checks (``validate``), outputs
and metrics. ``python -m mist_jax.main`` is its command line."""
