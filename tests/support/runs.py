"""Run configs and stop signals the end-to-end tests share."""

from configs import default as default_config


def smoke(**overrides):
    """The smoke config (a tiny random ViT on 10 MNIST classes, seconds) without the baseline
    run, with ``overrides`` given as ``{"dotted.key": value}``."""
    cfg = default_config.get_config("smoke")
    with cfg.unlocked():
        cfg.compare_baseline = False
        for dotted, value in overrides.items():
            node = cfg
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return cfg


class StopAt:
    """A ``StopSignal`` stand-in: the stop is requested at the k-th boundary check (the runner
    checks at every step boundary and after each task); ``crash=True`` raises instead, like a
    process dying there without a checkpoint of its own."""

    def __init__(self, k: int, crash: bool = False):
        self.k, self.crash, self.calls = k, crash, 0

    @property
    def requested(self):
        self.calls += 1
        if self.calls >= self.k and self.crash:
            raise RuntimeError("simulated crash")
        return "SIGTERM" if self.calls >= self.k else None
