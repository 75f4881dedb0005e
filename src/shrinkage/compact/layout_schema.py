"""The schema of the JSON a saved model carries, declared as data, and its checker.

A saved model's layout comes from a file: before any value in it reaches a layer
constructor, it is checked against the schemas below (value types, ranges, allowed
and required keys). The first problem found is reported as one line that names the
key path (``layout['conv1'].args.kernel_size[0]``), so a damaged or hand-edited file
never surfaces as a traceback from deep inside PyTorch.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from shrinkage.errors import DataError


class LayoutError(DataError):
    """A saved model's metadata or layout is malformed, or does not fit the base model."""


class SchemaMismatch(Exception):
    """A value that does not match its schema: ``where`` is its key path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def shown(value: object) -> str:
    """A short rendering of a JSON value for an error message."""
    kinds = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null", str: "a string"}
    if isinstance(value, (dict, list)):
        return kinds[type(value)]
    text = json.dumps(value) if isinstance(value, (int, float, str, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Schema(ABC):
    """One node of a schema: checks a decoded JSON value, raising :class:`SchemaMismatch`."""

    @abstractmethod
    def check(self, value: object, where: str) -> None: ...

    @abstractmethod
    def expected(self) -> str:
        """What a matching value is, in words (``an integer >= 0``)."""

    def mismatch(self, value: object, where: str) -> SchemaMismatch:
        return SchemaMismatch(where, f"expected {self.expected()}, got {shown(value)}")


@dataclass(frozen=True)
class Int(Schema):
    minimum: int = 0
    maximum: int | None = None

    def check(self, value: object, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.mismatch(value, where)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise self.mismatch(value, where)

    def expected(self) -> str:
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        return f"an integer from {self.minimum} to {self.maximum}"


@dataclass(frozen=True)
class Number(Schema):
    """A finite number (integers accepted) in ``[minimum, maximum]``."""

    minimum: float = -math.inf
    maximum: float = math.inf

    def check(self, value: object, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.mismatch(value, where)
        if not self.minimum <= value <= self.maximum:
            raise self.mismatch(value, where)

    def expected(self) -> str:
        limits = [f">= {self.minimum:g}"] if self.minimum > -math.inf else []
        limits += [f"<= {self.maximum:g}"] if self.maximum < math.inf else []
        return " ".join(["a finite number", " and ".join(limits)]).strip()


@dataclass(frozen=True)
class Bool(Schema):
    def check(self, value: object, where: str) -> None:
        if not isinstance(value, bool):
            raise self.mismatch(value, where)

    def expected(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text(Schema):
    """A string; one of ``choices`` when given; with ``parts``, a dotted name whose parts
    are non-empty and at most ``parts`` many (1: a single name without dots)."""

    choices: tuple[str, ...] = ()
    parts: int | None = None

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            raise self.mismatch(value, where)
        if self.parts is not None:
            pieces = value.split(".")
            if len(pieces) > self.parts or not all(pieces):
                raise self.mismatch(value, where)

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.parts == 1:
            return "a non-empty name without dots"
        if self.parts is not None:
            return f"a dotted module name of at most {self.parts} non-empty parts"
        return "a string"


@dataclass(frozen=True)
class Nullable(Schema):
    inner: Schema

    def check(self, value: object, where: str) -> None:
        if value is not None:
            try:
                self.inner.check(value, where)
            except SchemaMismatch:
                raise self.mismatch(value, where) from None

    def expected(self) -> str:
        return f"{self.inner.expected()} or null"


@dataclass(frozen=True)
class AnyOf(Schema):
    options: tuple[Schema, ...]

    def check(self, value: object, where: str) -> None:
        for option in self.options:
            try:
                option.check(value, where)
                return
            except SchemaMismatch:
                continue
        raise self.mismatch(value, where)

    def expected(self) -> str:
        return " or ".join(option.expected() for option in self.options)


@dataclass(frozen=True)
class ListOf(Schema):
    """A list of ``item``; of exactly ``length`` items when given, else of
    ``min_length`` to ``max_length`` items; with ``unique``, no item twice."""

    item: Schema
    length: int | None = None
    min_length: int = 0
    max_length: int | None = None
    unique: bool = False

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, list):
            raise self.mismatch(value, where)
        low, high = (self.length, self.length) if self.length is not None else (self.min_length, self.max_length)
        if len(value) < low or (high is not None and len(value) > high):
            raise SchemaMismatch(where, f"expected {self.expected()}, got a list of {len(value)}")
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")
        if self.unique and len(set(map(json.dumps, value))) != len(value):
            raise SchemaMismatch(where, f"expected {self.expected()}, got a repeated item")

    def expected(self) -> str:
        if self.length is not None:
            count = f"{self.length} "
        elif self.max_length is None:
            count = f"at least {self.min_length} " if self.min_length else ""
        else:
            count = f"{self.min_length} to {self.max_length} "
        return f"a list of {count}{'distinct ' if self.unique else ''}items, each {self.item.expected()}"


@dataclass(frozen=True)
class AnyObject(Schema):
    """A JSON object whose contents another schema checks later (chosen by a sibling key)."""

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise self.mismatch(value, where)

    def expected(self) -> str:
        return "an object"


@dataclass(frozen=True)
class Record(Schema):
    """An object with exactly these keys (``optional`` ones may be absent), each checked."""

    fields: Mapping[str, Schema]
    optional: frozenset[str] = field(default_factory=frozenset)

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise self.mismatch(value, where)
        known = ", ".join(self.fields) or "none"
        for key in value:
            if key not in self.fields:
                raise SchemaMismatch(where, f"unknown key {key!r} (expected keys: {known})")
        for key, schema in self.fields.items():
            if key in value:
                schema.check(value[key], f"{where}.{key}" if where else key)
            elif key not in self.optional:
                raise SchemaMismatch(where, f"missing key {key!r}")

    def expected(self) -> str:
        return "an object with keys " + ", ".join(self.fields) if self.fields else "an empty object"


@dataclass(frozen=True)
class MapOf(Schema):
    """An object with any keys matching ``keys``, each value matching ``values``."""

    keys: Text
    values: Schema

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise self.mismatch(value, where)
        for key, item in value.items():
            self.keys.check(key, f"{where} key {key!r}")
            self.values.check(item, f"{where}[{key!r}]")

    def expected(self) -> str:
        return f"an object of {self.values.expected()} by {self.keys.expected()}"


def parse_json(text: str, where: str) -> object:
    """``json.loads(text)``, any failure (truncated, invalid, absurdly nested) as a mismatch."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaMismatch(where, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise SchemaMismatch(where, "invalid JSON (nested too deeply)") from None
