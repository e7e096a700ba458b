"""``retry:`` (of a step or a failure rule) and a step's ``timeout:``: attempts and how long they may take."""

from __future__ import annotations

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["retry", "timeouts"]

_RETRY_KEYS = ("max", "backoff", "initialInterval", "maxInterval", "multiplier", "jitter")
_BACKOFFS = ("exponential", "fixed")
_TIMEOUT_KEYS = ("scheduleToStart", "startToClose", "heartbeat")


def retry(c: Compilation, value: object, loc: Loc) -> model.RetryPolicy | None:
    spec = c.mapping(value, loc, _RETRY_KEYS, "retry")
    if spec is None:
        return None
    problems = len(c.violations)
    if "max" not in spec:
        c.problem((*loc, "max"), "missing: retry needs max: (retries after the first attempt)")
    max_retries = c.integer(spec["max"], (*loc, "max"), "max", 0) if "max" in spec else None
    defaults = model.Backoff()
    kind = spec.get("backoff", defaults.kind)
    if kind not in _BACKOFFS:
        c.problem((*loc, "backoff"), f"backoff must be one of {', '.join(_BACKOFFS)}, found {kind!r}")
    initial_value = spec.get("initialInterval", defaults.initial)
    initial = c.duration(initial_value, (*loc, "initialInterval"), "initialInterval")
    maximum = c.duration(spec.get("maxInterval", defaults.maximum), (*loc, "maxInterval"), "maxInterval")
    multiplier = c.number(spec.get("multiplier", defaults.multiplier), (*loc, "multiplier"), "multiplier", 1)
    jitter = c.number(spec.get("jitter", defaults.jitter), (*loc, "jitter"), "jitter", 0, 1)
    if initial is not None and maximum is not None and maximum < initial:
        message = f"maxInterval ({maximum:g}s) is shorter than initialInterval ({initial:g}s)"
        c.problem((*loc, "maxInterval"), message)
    if len(c.violations) != problems:
        return None
    assert max_retries is not None and initial is not None and maximum is not None
    assert multiplier is not None and jitter is not None
    backoff = model.Backoff(str(kind), initial, maximum, multiplier, jitter)
    return model.RetryPolicy(max_retries=max_retries, backoff=backoff)


def timeouts(c: Compilation, value: object, loc: Loc) -> model.Timeouts | None:
    spec = c.mapping(value, loc, _TIMEOUT_KEYS, "timeout")
    if spec is None:
        return None
    problems = len(c.violations)
    seconds = {
        key: c.duration(spec[key], (*loc, key), key, positive=True) for key in _TIMEOUT_KEYS if key in spec
    }
    if len(c.violations) != problems:
        return None
    return model.Timeouts(
        schedule_to_start=seconds.get("scheduleToStart"),
        start_to_close=seconds.get("startToClose"),
        heartbeat=seconds.get("heartbeat"),
    )
