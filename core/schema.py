"""Options declared once, as the fields of a frozen dataclass.

A plugin (or shared service) writes its settings as one class::

    @dataclass(frozen=True)
    class ProbeOptions:
        interval: float = option("duration", 300.0, "How often every probe runs.", env="PROBE_INTERVAL")

The field name is the setting's key in its TOML table, the field's default is
the default, and :func:`option` adds what the core needs to parse the value,
document it and show it (``config init``/``show``, the README tables). The
core resolves every source (defaults < file < environment < command line),
parses and checks each value, then builds one instance of the class: the
plugin receives typed values and never restates a default.

Checks that involve more than one value, or that the option types cannot
express, go into ``__post_init__`` and raise :class:`OptionError` naming the
option; start-up then stops with one line naming the setting as the user
spelt it.

A value derived from others when it is not set (the object-store name from
the node name) comes from an optional classmethod ``derive(values)`` that
yields :class:`Derived` values and :class:`OptionWarning` lines; the core
applies them to the resolved settings, so ``config show`` shows the derived
value and where it came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from crusoe_metrics_exporter.contract import ConfigOption, OptionType

T = TypeVar("T")

_METADATA_KEY = "crusoe_metrics_exporter.option"


class OptionError(ValueError):
    """An option value the plugin cannot use; ``str()`` says what is accepted.

    Raise it from the options class's ``__post_init__``: the core reports
    ``invalid <setting>=<value>: <message>`` and stops start-up.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.message = message


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a plugin that has no settings."""


def option(
    type: OptionType,
    default: T,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> T:
    """Declare one dataclass field as a setting.

    ``default`` is in the field's Python type: seconds as float for durations,
    tuples for the list types (a frozen options object holds no lists).
    ``env`` names an environment variable that sets it; ``choices`` limits
    str and int options; ``minimum`` and ``maximum`` bound int, float and
    duration options (both are shown in the reference and in the error for a
    value outside them; every numeric option of the exporter declares both).
    """
    declared = _Declared(type, help, env, choices, minimum, maximum)
    return dataclasses.field(default=default, metadata={_METADATA_KEY: declared})


@dataclasses.dataclass(frozen=True)
class _Declared:
    type: OptionType
    help: str
    env: str | None
    choices: tuple[str, ...]
    minimum: float | None
    maximum: float | None


@dataclasses.dataclass(frozen=True)
class Derived:
    """A value derived from another option because it was not set (``config show`` names the source)."""

    option: str
    value: Any
    #: The option it was derived from.
    source_option: str


@dataclasses.dataclass(frozen=True)
class OptionWarning:
    """Something about an option worth one warning line, but not a reason to stop start-up."""

    option: str
    #: Reads after ``<setting>=<value>``.
    message: str


class InvalidOptions(TypeError):
    """An options class the core cannot use (not a dataclass, a field without option())."""


def config_options(options_class: type[Any] | None) -> tuple[ConfigOption, ...]:
    """The settings an options class declares, in field order."""
    if options_class is None:
        return ()
    if not (isinstance(options_class, type) and dataclasses.is_dataclass(options_class)):
        raise InvalidOptions(f"options must be a dataclass type, got {options_class!r}")
    out = []
    for f in dataclasses.fields(options_class):
        declared = f.metadata.get(_METADATA_KEY)
        if not isinstance(declared, _Declared):
            raise InvalidOptions(f"options field {f.name!r} is not declared with option(...)")
        if f.default is dataclasses.MISSING:
            raise InvalidOptions(f"options field {f.name!r} has no default")
        out.append(ConfigOption(f.name, declared.type, f.default, declared.help, declared.env, declared.choices,
                                declared.minimum, declared.maximum))
    return tuple(out)


def build_options(options_class: type[Any] | None, values: Mapping[str, Any]) -> Any:
    """An instance of ``options_class`` from parsed values (lists become tuples).

    Raises OptionError when the class's own checks refuse the values.
    """
    if options_class is None:
        return NoOptions()
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return options_class(**kwargs)
