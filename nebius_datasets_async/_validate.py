"""The one validation style: attrs validators (and a plain check) raising InvalidArgumentError."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ._exceptions import InvalidArgumentError

__all__ = ["at_least", "between", "check", "integer", "optional"]

Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def check(condition: bool, message: str) -> None:
    """Raise ``InvalidArgumentError(message)`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgumentError(message)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float) -> Validator:
    """A finite number ``>= low``."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(
            _is_number(value) and value >= low,
            f"{attribute.name} must be a finite number >= {low:g}, got {value!r}",
        )

    return validate


def between(low: float, high: float) -> Validator:
    """A number strictly between ``low`` and ``high``."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(
            _is_number(value) and low < value < high,
            f"{attribute.name} must be between {low:g} and {high:g}, got {value!r}",
        )

    return validate


def integer(low: int) -> Validator:
    """An ``int`` (not a bool) ``>= low``."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(
            isinstance(value, int) and not isinstance(value, bool) and value >= low,
            f"{attribute.name} must be an int >= {low}, got {value!r}",
        )

    return validate


def optional(validator: Validator) -> Validator:
    """``None``, or what ``validator`` accepts."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return validate
