"""Check a config group's plain values against the annotated parameters of the class it instantiates, so that
``trainer.max_steps=abc`` fails before anything starts, naming the key, instead of as a TypeError deep inside."""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable

_PLAIN = (bool, int, float, str, type(None))


def _accepts(annotation: Any, value: Any) -> bool | None:
    """True / False when ``annotation`` decides about the plain ``value``; None when it cannot tell."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(a, value) for a in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation in _PLAIN:
        if annotation is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, annotation)
    if isinstance(annotation, type) and isinstance(value, _PLAIN):
        return isinstance(value, annotation) or None  # a class parameter given a plain value: maybe converted
    return None


def check_plain_arguments(target: Callable, values: Mapping[str, Any], group: str) -> None:
    """Raise ``ValueError("<group>.<key>: expected <type>, got <value>")`` for each plain value that the
    annotation of ``target``'s parameter of that name rules out (other values are left to ``target``)."""
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: nothing to check
        return
    errors = []
    for key, value in values.items():
        if key.startswith("_") or key not in hints or not isinstance(value, _PLAIN):
            continue
        if _accepts(hints[key], value) is False:
            errors.append(f"{group}.{key}: expected {_describe(hints[key])}, got {value!r}")
    if errors:
        raise ValueError("; ".join(errors))


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
