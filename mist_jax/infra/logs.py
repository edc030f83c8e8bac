"""Logging at the command lines' edge: keep the libraries' warnings, drop their INFO chatter."""

from __future__ import annotations

import logging as pylogging

from absl import logging


#: Libraries whose INFO records are chatter on a run's console (orbax's per-save lines, TFDS's
#: per-load lines, JAX's "Unable to initialize backend 'tpu'" on a CPU or GPU machine,
#: matplotlib's font cache).
NOISY = ("orbax", "tensorflow_datasets", "jax/_src", "matplotlib")


class QuietLibraries(pylogging.Filter):
    """Drop the ``NOISY`` libraries' INFO records; keep their warnings and errors, and every
    record of mist-jax itself."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(lib in record.pathname for lib in NOISY)
        return record.levelno >= pylogging.WARNING or not noisy


def quiet_libraries() -> None:
    """Install ``QuietLibraries`` on absl's handler (call once, from a CLI's ``main``)."""
    logging.get_absl_handler().addFilter(QuietLibraries())
