"""Clean stops: SIGINT / SIGTERM end a run at the next step boundary, after a checkpoint.

``StopSignal.install()`` replaces the SIGINT and SIGTERM handlers with one that only records
the request (a second signal interrupts at once, as Ctrl-C normally does). The runner checks
``requested`` at every step boundary (each scoring batch, MIST step and image-learner step, and
after each task), writes an in-task checkpoint there and raises ``Interrupted``, whose message
says what is saved and how to resume; ``mist_jax.main`` prints it as one line and exits 130.

On several hosts a local signal cannot pick one step for all of them, so there the runner stops
on JAX's preemption sync point instead (orbax ``reached_preemption``; JAX's preemption service
turns a TPU/GPU VM's notice into the same step on every host).
"""

from __future__ import annotations

import signal

from absl import logging


class Interrupted(Exception):
    """A run stopped on request (SIGINT / SIGTERM / preemption); the message says what is
    checkpointed and how to resume."""


class StopSignal:
    """The stop request of SIGINT / SIGTERM, set by the signal handler, read at boundaries.

    Attributes:
      requested: the name of the first signal received (e.g. "SIGTERM"), or None.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignal":
        """Handle SIGINT and SIGTERM until ``uninstall`` (main thread only). Returns self."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers ``install`` replaced."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        if self.requested is not None:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        logging.warning("%s received: stopping at the next step boundary after a checkpoint "
                        "(send it again to stop at once).", self.requested)


def run_or_stop(run, name: str) -> dict:
    """``run.run()`` of a ``train.Run``, turning a KeyboardInterrupt (a second signal: no
    in-task checkpoint) into ``Interrupted`` naming the tasks already checkpointed.
    Raises: Interrupted when stopped either way (the message says how to resume)."""
    try:
        return run.run()
    except KeyboardInterrupt:
        done = run.record["next_task"]
        saved = f"tasks 0-{done - 1} are checkpointed" if done else "no task was finished"
        raise Interrupted(f"Interrupted in {run.workdir} ({name}) during task {done}; {saved}. "
                          "Re-run the same command to resume.") from None
