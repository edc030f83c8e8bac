"""Logging at the command lines' edge: keep the libraries' warnings, drop their INFO chatter."""

from __future__ import annotations

import logging as pylogging

from absl import logging


class QuietLibraries(pylogging.Filter):
    """Drop orbax's and TFDS's per-save / per-load INFO records; keep their warnings and
    errors, and every record of mist-jax itself."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = "orbax" in record.pathname or "tensorflow_datasets" in record.pathname
        return record.levelno >= pylogging.WARNING or not noisy


def quiet_libraries() -> None:
    """Install ``QuietLibraries`` on absl's handler (call once, from a CLI's ``main``)."""
    logging.get_absl_handler().addFilter(QuietLibraries())
