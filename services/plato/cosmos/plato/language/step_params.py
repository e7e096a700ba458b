"""The parameters of ``uses:`` builtin steps (``with:``) and of ``job:`` steps (a JobSpec template).

Values that hold a placeholder are left to the engine; everything else is checked and normalized here
(durations to seconds or protobuf-JSON text, YAML numbers in argv/env/labels to strings).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from cosmos.plato.language import model
from cosmos.plato.language.compilation import Compilation
from cosmos.plato.language.durations import seconds_text
from cosmos.plato.language.expressions import is_number
from cosmos.plato.language.templates import TemplateValue
from cosmos.plato.language.yaml_reader import Loc

__all__ = ["builtin", "job"]

# Top-level fields of cosmos.stratum.v1.JobSpec in protobuf-JSON spelling; the runner fills the rest.
_JOB_KEYS = (
    "argv",
    "image",
    "env",
    "inputs",
    "outputs",
    "resources",
    "timeout",
    "priority",
    "tenant",
    "labels",
    "infraRetry",
    "progressFormat",
    "mediaDuration",
    "runtime",
    "displayName",
)
_JOB_DURATIONS = ("timeout", "mediaDuration")
# Builtin → (required parameters, optional parameters).
_BUILTIN_PARAMS: Final = {
    "log": (("message",), ("level",)),
    "notify": (("channel", "message"), ()),
    "timer": (("duration",), ()),
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _is_dynamic(value: object) -> bool:
    """Whether a string holds a placeholder, so only the engine can check its value."""
    return isinstance(value, str) and "${" in value.replace("$${", "")


def _as_string(value: object) -> object:
    """YAML reads ``-crf, 23`` as a number; JobSpec's argv, env and labels hold strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return str(value)
    return value


def builtin(
    c: Compilation, spec: dict[str, Any], loc: Loc, names: Iterable[str], who: str
) -> tuple[str, TemplateValue | None]:
    name = spec["uses"]
    if not isinstance(name, str) or name not in _BUILTIN_PARAMS:
        c.problem((*loc, "uses"), f"unknown builtin {name!r} (builtins: {', '.join(model.BUILTINS)})")
        return "", None
    required, optional = _BUILTIN_PARAMS[name]
    with_loc = (*loc, "with")
    params = c.mapping(spec.get("with"), with_loc, required + optional, f"uses: {name} parameters")
    if params is None:
        return name, None
    problems = len(c.violations)
    for key in required:
        if key not in params:
            c.problem((*with_loc, key), f"missing: uses: {name} needs with: {{{key}: ...}}")
    params = dict(params)
    if name == "timer" and "duration" in params and not _is_dynamic(params["duration"]):
        # Normalized to seconds here; a templated duration is read by the engine (parse_duration).
        params["duration"] = c.duration(params["duration"], (*with_loc, "duration"), "duration")
    level = params.get("level")
    if name == "log" and level is not None and not _is_dynamic(level) and level not in _LOG_LEVELS:
        c.problem((*with_loc, "level"), f"level must be one of {', '.join(_LOG_LEVELS)}")
    if len(c.violations) != problems:
        return name, None
    return name, c.template(params, with_loc, names, who)


def job(c: Compilation, value: object, loc: Loc, names: Iterable[str], who: str) -> TemplateValue | None:
    spec = c.mapping(value, loc, _JOB_KEYS, "job")
    if spec is None:
        return None
    problems = len(c.violations)
    argv = spec.get("argv")
    whole_placeholder = isinstance(argv, str) and argv.startswith("${") and argv.endswith("}")
    if not whole_placeholder and (not isinstance(argv, list) or not argv):
        c.problem((*loc, "argv"), "job: needs argv: a non-empty list of arguments (never a shell string)")
    spec = dict(spec)
    if isinstance(argv, list):
        spec["argv"] = [_as_string(item) for item in argv]
    for key in ("env", "labels"):
        if isinstance(spec.get(key), dict):
            spec[key] = {name: _as_string(item) for name, item in spec[key].items()}
    for key in _JOB_DURATIONS:
        if key in spec and not _is_dynamic(spec[key]):
            seconds = c.duration(spec[key], (*loc, key), key, positive=True)
            spec[key] = None if seconds is None else seconds_text(seconds)
    if len(c.violations) != problems:
        return None
    return c.template(spec, loc, names, who)
