"""Typed ``[drivers.<name>]`` options: the base model drivers derive from, and its parser.

A driver declares its options as a subclass of :class:`DriverOptions` (one
field per key, with its default, constraints and a description) and reads
them in ``overlayd_configure`` with :func:`parse_driver_options`. Unknown
keys and bad values become a :class:`~overlayd.errors.ConfigError` that names
the table, the key and, for unknown keys, every key the driver knows.
``docs/configuration.rst`` lists exactly these fields with their defaults
(``tests/test_docs.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from typing import TypeVar

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import ValidationError

from overlayd.errors import ConfigError

__all__ = ["DriverOptions", "parse_driver_options"]

M = TypeVar("M", bound="DriverOptions")


class DriverOptions(BaseModel):
    """Base of every driver's options model: frozen, strict, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_driver_options(model: type[M], driver: str, raw: Mapping[str, Any]) -> M:
    """Validate the ``[drivers.<driver>]`` table ``raw`` against ``model``.

    :raises ConfigError: naming the unknown keys and the known ones, or the
        first key whose value is invalid and why.
    """
    known = sorted(model.model_fields)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [drivers.{driver}]: {', '.join(unknown)} "
            f"(known: {', '.join(known)})"
        )
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(_describe(driver, raw, exc)) from None


def _describe(driver: str, raw: Mapping[str, Any], exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    loc = error["loc"]
    key = str(loc[0]) if loc else ""
    if key in raw:
        return f"[drivers.{driver}] {key} = {raw[key]!r} is invalid: {message}"
    return f"[drivers.{driver}] {message}"
