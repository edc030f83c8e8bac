"""Run plumbing, below everything else: checkpoints, the compilation cache, atomic writes, the
workdir lock, interrupts, logs, the device mesh, seeds, pytree helpers and where files live
(``paths``). Nothing here imports models, the method, data, learners or the runner."""
