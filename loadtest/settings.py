"""Settings the load tests share: durations in Locust's syntax, and the knee search's steps.

Durations are read with Locust's own parser (20, 20s, 2m, 1h30m). This module does not import the
`locust` package: its __init__ monkey-patches the whole process for gevent, which the runners that
start servers and threads (run.py, soak.py, overload.py, bench.py) must not be.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The knee search (knee_shape.py): environment variable -> default.
KNEE_DEFAULTS = {"IQA_STEPS": "1,2,4,8,16,32", "IQA_STEP_SECONDS": "20", "IQA_P99_LIMIT_MS": "1000"}


@functools.cache
def _parse_timespan():
    """locust/util/timespan.py (it imports re and datetime only), loaded as a file of its own."""
    package = Path(importlib.util.find_spec("locust").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("_locust_timespan", package / "util" / "timespan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_timespan


def duration_s(text: str) -> float:
    """Seconds from `90`, `2.5` (plain numbers are seconds) or Locust's `20s`, `2m`, `1h30m`.

    Also an argparse type: a bad value is a usage error naming the option and the accepted forms.
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(_parse_timespan()(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


@dataclass(frozen=True)
class KneeSettings:
    steps: tuple[int, ...]  # users per step
    step_s: float  # each step's length
    p99_limit_ms: float  # the knee: the highest throughput whose p99 stays under this

    @property
    def length_s(self) -> float:
        return len(self.steps) * self.step_s


def knee_settings(env: Mapping[str, str] = os.environ) -> KneeSettings:
    value = {name: env.get(name, default) for name, default in KNEE_DEFAULTS.items()}
    return KneeSettings(steps=tuple(int(n) for n in value["IQA_STEPS"].split(",")),
                        step_s=duration_s(value["IQA_STEP_SECONDS"]),
                        p99_limit_ms=float(value["IQA_P99_LIMIT_MS"]))
