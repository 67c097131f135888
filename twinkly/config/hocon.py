"""Reading a HOCON tree key by key: typed values, errors that name the key's full path,
and unknown keys refused, so a typo in a configuration file stops start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pyhocon import ConfigTree


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key's path."""


class Section:
    """One HOCON object being read; remembers which keys were consumed."""

    def __init__(self, tree: ConfigTree | None, path: str) -> None:
        self._tree = tree if tree is not None else ConfigTree()
        self._path = path
        self._used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str) -> Any:
        self._used.add(key)
        return self._tree.get(key, None) if key in self._tree else None

    def section(self, key: str) -> Section:
        value = self._raw(key)
        if value is not None and not isinstance(value, ConfigTree):
            raise ConfigError(f"{self._key(key)}: expected an object, got {value!r}")
        return Section(value, self._key(key))

    def string(
        self, key: str, default: str | None, choices: tuple[str, ...] = (), exact: bool = False
    ) -> Any:
        """A string; with ``exact``, only a quoted one (HOCON reads ``007`` as 7)."""
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, (ConfigTree, list, bool)) or (exact and not isinstance(value, str)):
            raise ConfigError(
                f"{self._key(key)}: expected a string{' in quotes' if exact else ''}, got {value!r}"
            )
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(
                f"{self._key(key)}: must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{self._key(key)}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{self._key(key)}: expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{self._key(key)}: must be between {low} and {high}, got {number}")
        return number

    def seconds(self, key: str, default: float) -> float:
        value = self._raw(key)
        if value is None:
            return default
        try:
            number = parse_seconds(value)
        except ValueError:
            raise ConfigError(
                f"{self._key(key)}: expected a duration such as 10, 10s or 500ms, got {value!r}"
            ) from None
        if number < 0:
            raise ConfigError(f"{self._key(key)}: must not be negative")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "on"):
            return True
        if str(value).lower() in ("false", "no", "off"):
            return False
        raise ConfigError(f"{self._key(key)}: expected true or false, got {value!r}")

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._raw(key)
        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
        except ValueError:
            raise ConfigError(f"{self._key(key)}: expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{self._key(key)}: must be between {low} and {high}, got {number}")
        return number

    def patterns(self, key: str) -> tuple[str, ...]:
        """A list of regexes, taken literally and compiled once to check them."""
        out = []
        for index, value in enumerate(self.raw_list(key)):
            path = f"{self._key(key)}[{index}]"
            if not isinstance(value, str):
                raise ConfigError(f"{path}: expected a regular expression in quotes")
            try:
                re.compile(value)
            except re.error as e:
                raise ConfigError(f"{path}: invalid regular expression {value!r}: {e}") from None
            out.append(value)
        return tuple(out)

    def strings(self, key: str) -> tuple[str, ...]:
        out = []
        for index, value in enumerate(self.raw_list(key)):
            if not isinstance(value, str):
                raise ConfigError(f"{self._key(key)}[{index}]: expected a string in quotes")
            out.append(value)
        return tuple(out)

    def mapping(self, key: str) -> dict[str, str]:
        """An object of names to strings, e.g. user names to passwords."""
        value = self._raw(key)
        if value is None:
            return {}
        if not isinstance(value, ConfigTree):
            raise ConfigError(f"{self._key(key)}: expected an object of names to strings")
        out = {}
        for name, item in value.items():
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise ConfigError(f"{self._key(key)}.{name}: expected a string")
            out[str(name)] = str(item)
        return out

    def raw_list(self, key: str) -> list[Any]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self._key(key)}: expected a list, got {value!r}")
        return value

    def finish(self) -> None:
        """Reject every key that was not read."""
        for key in self._tree:
            if key not in self._used:
                raise ConfigError(f"{self._key(key)}: unknown configuration key")


def parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if type(value).__name__ == "relativedelta":  # pyhocon's reading of "5 seconds"
        if value.years or value.months:
            raise ValueError(value)
        parts = ("days", "hours", "minutes", "seconds", "microseconds")
        return timedelta(**{p: getattr(value, p) for p in parts}).total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)
