"""Field specifications: the table that drives both encoding and validating decoding.

Every frame field is declared once, with a spec from this module, and the codec walks that table in
both directions (the h11 way: one table, no per-frame hand-written parsing). A spec's ``load`` turns a
decoded msgpack value into the Python value of the field, checking type and limits; ``dump`` does the
reverse for encoding and checks the same rules, so anything we send is something we would accept.

Problems are reported by raising :class:`FieldProblem`; the codec turns it into a
``RemoteProtocolError`` (decode) or ``LocalProtocolError`` (encode) with the field's path.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import re
from collections.abc import Callable
from typing import Any, ClassVar

import msgpack

from .errors import ErrorCode

__all__ = [
    "MAX_SAFE_INT",
    "Bool",
    "Enum",
    "FieldProblem",
    "Int",
    "Limits",
    "ListOf",
    "Opaque",
    "Record",
    "Spec",
    "Str",
    "spec_field",
]

MAX_SAFE_INT = 2**53 - 1
"""Largest integer every client language holds exactly (JavaScript's Number.MAX_SAFE_INTEGER)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits applied while decoding (and encoding) one frame.

    Attributes:
        max_frame_bytes: the largest encoded frame accepted, checked before any parsing.
        max_depth: how deep an opaque value (custom data, game state, metadata) may nest; a map
            holding a list is depth 2.
        max_chat_chars: the longest chat message text, in Unicode code points.
        max_meta_bytes: the largest room ``meta``, in encoded msgpack bytes.
        max_presence_bytes: the largest presence ``data`` of one member, in encoded msgpack bytes.
        max_chat_meta_bytes: the largest chat message ``meta``, in encoded msgpack bytes.
        max_state_bytes: the largest game ``state``, in encoded msgpack bytes.
        max_inbox_body_bytes: the largest ``body`` of one inbox entry (``notify``), in encoded
            msgpack bytes.

    The byte limits exist because these values are copied into every page and snapshot that lists
    their record: a count limit alone lets 20 rooms of 62 KB ``meta`` make every lobby page too large
    to send. Each keeps one record far below a frame; the state limit keeps a snapshot (which carries
    the state, the room meta and a page of members) under one (PROTOCOL.md §3.4).
    """

    max_frame_bytes: int = 64 * 1024
    max_depth: int = 16
    max_chat_chars: int = 4096
    max_meta_bytes: int = 16 * 1024
    max_presence_bytes: int = 16 * 1024
    max_chat_meta_bytes: int = 16 * 1024
    max_state_bytes: int = 256 * 1024
    max_inbox_body_bytes: int = 8 * 1024

    def __post_init__(self) -> None:
        if (self.max_frame_bytes < 64 or self.max_depth < 1 or self.max_chat_chars < 1
                or min(self.max_meta_bytes, self.max_presence_bytes, self.max_chat_meta_bytes, self.max_state_bytes,
                        self.max_inbox_body_bytes) < 1):
            raise ValueError("limits must be positive (max_frame_bytes >= 64)")


_DEFAULTS = Limits()

_Loader = Callable[..., Any]
"""A compiled loader: ``(raw, limits, wire=None) -> record``; ``wire`` is the length of the frame the
map was just decoded from, when it was (see ``Opaque.load_unmeasured``)."""


class FieldProblem(Exception):  # noqa: N818 - internal signal, not an error users see
    """A value broke a spec. Carries the error code and a path-free message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Spec(abc.ABC):
    """Base of all field specs."""

    @abc.abstractmethod
    def load(self, value: Any, limits: Limits) -> Any:
        """Check a decoded wire value and convert it to the field's Python value."""

    def dump(self, value: Any, limits: Limits) -> Any:
        """Check a field's Python value and convert it to a msgpack-ready value."""
        return self.load(value, limits)

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for PROTOCOL.md-style listings and error messages."""


def _type_name(value: Any) -> str:
    return type(value).__name__


@dataclasses.dataclass(frozen=True, slots=True)
class Int(Spec):
    """An integer in ``[lo, hi]``; booleans and floats are refused."""

    lo: int = 0
    hi: int = MAX_SAFE_INT

    def load(self, value: Any, limits: Limits) -> int:
        if type(value) is not int:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected integer, got {_type_name(value)}")
        if not self.lo <= value <= self.hi:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"{value} is outside [{self.lo}, {self.hi}]")
        return value

    def describe(self) -> str:
        return f"int {self.lo}..{self.hi}"


@dataclasses.dataclass(frozen=True, slots=True)
class Bool(Spec):
    """A msgpack boolean (not 0/1)."""

    def load(self, value: Any, limits: Limits) -> bool:
        if type(value) is not bool:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected boolean, got {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "bool"


@dataclasses.dataclass(frozen=True, slots=True)
class Str(Spec):
    """A UTF-8 string whose length in code points is within bounds, optionally matching a pattern.

    ``max_len`` may be the name of a :class:`Limits` attribute, for limits set by configuration.
    """

    min_len: int = 0
    max_len: int | str = 256
    pattern: str | None = None
    _regex: re.Pattern[str] | None = dataclasses.field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    def _max(self, limits: Limits) -> int:
        if isinstance(self.max_len, str):
            return int(getattr(limits, self.max_len))
        return self.max_len

    def load(self, value: Any, limits: Limits) -> str:
        if type(value) is not str:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected string, got {_type_name(value)}")
        if len(value) > self._max(limits):
            raise FieldProblem(ErrorCode.TOO_LONG, f"string longer than {self._max(limits)}")
        if len(value) < self.min_len:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"string shorter than {self.min_len}")
        if self._regex is not None and self._regex.fullmatch(value) is None:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"string does not match {self.pattern}")
        return value

    def describe(self) -> str:
        # A limit set by configuration shows its default: a number, not the setting's name.
        text = f"str {self.min_len}..{self._max(_DEFAULTS)}"
        return text if self.pattern is None else f"{text} matching {self.pattern}"


@dataclasses.dataclass(frozen=True, slots=True)
class Enum(Spec):
    """A string that must be one value of a ``StrEnum``; loads as the enum member."""

    enum_type: type[enum.StrEnum]

    def load(self, value: Any, limits: Limits) -> enum.StrEnum:
        if type(value) is not str and not isinstance(value, self.enum_type):
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected string, got {_type_name(value)}")
        try:
            return self.enum_type(value)
        except ValueError:
            allowed = ", ".join(m.value for m in self.enum_type)
            raise FieldProblem(ErrorCode.BAD_FIELD, f"{value!r} is not one of: {allowed}") from None

    def dump(self, value: Any, limits: Limits) -> str:
        return str(self.load(value, limits).value)

    def describe(self) -> str:
        return "one of " + "|".join(m.value for m in self.enum_type)


_SCALARS = (type(None), bool, int, float, str, bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class Opaque(Spec):
    """Any msgpack value the application owns (custom data, game state, metadata).

    Only nil, booleans, integers, floats, strings, byte strings, arrays and maps with string keys
    are allowed; ext types (timestamps included) are refused. Nesting is capped at
    ``limits.max_depth + extra_depth`` (``extra_depth`` leaves room for the envelope of server
    replies that embed user values). With ``map_only`` the top level must be a map.

    ``max_bytes`` names a :class:`Limits` attribute bounding the value's encoded msgpack size
    (``too_large`` beyond it). The value is packed once more to measure it: msgpack's C packer costs
    far less than the Python walk above, and an estimate could be fooled (4-byte code points).
    """

    map_only: bool = False
    extra_depth: int = 0
    max_bytes: str | None = None

    def load(self, value: Any, limits: Limits) -> Any:
        self.load_unmeasured(value, limits)
        if self.max_bytes is not None:
            limit = int(getattr(limits, self.max_bytes))
            try:
                size = len(msgpack.packb(value, use_bin_type=True))
            except (OverflowError, ValueError) as exc:  # an integer outside msgpack's 64-bit range
                raise FieldProblem(ErrorCode.BAD_FIELD, f"value cannot be encoded: {exc}") from None
            if size > limit:
                raise FieldProblem(ErrorCode.TOO_LARGE, f"value of {size} bytes exceeds {limit}")
        return value

    def load_unmeasured(self, value: Any, limits: Limits) -> Any:
        """``load`` without the ``max_bytes`` check, for a value just decoded from a frame of at most
        half ``max_bytes``: packed again it cannot exceed it.

        Why that bound holds: every part of a decoded value packs back into at most the bytes it came
        in (msgpack's packer writes the shortest header and integer), except a float32, which
        becomes a float64 (5 bytes to 9). Nothing else grows; so the value packs into at most 1.8
        times the frame. Not for values from elsewhere: an application's ints may not fit msgpack.
        """
        if self.map_only and type(value) is not dict:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected map, got {_type_name(value)}")
        _check_opaque(value, limits.max_depth + self.extra_depth)
        return value

    def describe(self) -> str:
        text = "map (opaque" if self.map_only else "any (opaque"
        if self.max_bytes is not None:
            text += f", at most {getattr(Limits(), self.max_bytes)} bytes encoded"
        return text + ")"


_SCALAR_TYPES = frozenset(_SCALARS)


def _check_opaque(root: Any, max_depth: int) -> None:
    # The common shapes first: a scalar, or a map of string keys to scalars (depth 1, within every
    # max_depth), in one plain loop (a third of the walk's cost). Anything else takes the walk, which
    # alone raises, so which problem is reported does not change.
    kind = type(root)
    if kind in _SCALAR_TYPES:
        return
    if kind is dict:
        for key, item in root.items():
            if type(key) is not str or type(item) not in _SCALAR_TYPES:
                break
        else:
            return
    # Iterative walk: a hostile frame nested 1,000 deep must not hit Python's recursion limit.
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is list or kind is tuple:
            if depth >= max_depth:
                raise FieldProblem(ErrorCode.TOO_DEEP, f"value nests deeper than {max_depth}")
            stack.extend((item, depth + 1) for item in value)
        elif kind is dict:
            if depth >= max_depth:
                raise FieldProblem(ErrorCode.TOO_DEEP, f"value nests deeper than {max_depth}")
            for key, item in value.items():
                if type(key) is not str:
                    raise FieldProblem(ErrorCode.BAD_FIELD, "map keys must be strings")
                stack.append((item, depth + 1))
        elif kind not in _SCALARS:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"unsupported value type {kind.__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class ListOf(Spec):
    """An array of at most ``max_len`` items of one spec; loads as a tuple."""

    item: Spec
    max_len: int

    def load(self, value: Any, limits: Limits) -> tuple[Any, ...]:
        return self._each(value, limits, self.item.load)

    def dump(self, value: Any, limits: Limits) -> list[Any]:
        return list(self._each(value, limits, self.item.dump))

    def _each(self, value: Any, limits: Limits, convert: Callable[[Any, Limits], Any]) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected array, got {_type_name(value)}")
        if len(value) > self.max_len:
            raise FieldProblem(ErrorCode.TOO_LONG, f"array longer than {self.max_len}")
        return tuple(convert(item, limits) for item in value)

    def describe(self) -> str:
        return f"array (max {self.max_len}) of {self.item.describe()}"


@dataclasses.dataclass(frozen=True, slots=True)
class Record(Spec):
    """A nested map described by a record dataclass (see :class:`WireRecord`)."""

    record_type: type[WireRecord]

    def load(self, value: Any, limits: Limits) -> WireRecord:
        if type(value) is not dict:
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected map, got {_type_name(value)}")
        return self.record_type.load_fields(value, limits)

    def dump(self, value: Any, limits: Limits) -> dict[str, Any]:
        if not isinstance(value, self.record_type):
            raise FieldProblem(ErrorCode.BAD_FIELD, f"expected {self.record_type.__name__}")
        return value.dump_fields(limits)

    def describe(self) -> str:
        return self.record_type.__name__


def spec_field(spec: Spec, *, default: Any = dataclasses.MISSING) -> Any:
    """Declare a wire field: its spec, and its default (absent on the wire means the default).

    A field without a default is required. A field whose value is ``None`` is left out when
    encoding, and a nil on the wire loads as absent.
    """
    return dataclasses.field(default=default, metadata={"spec": spec})


class WireRecord:
    """Mixin for frozen dataclasses whose fields are all declared with :func:`spec_field`.

    The field table is computed once per class. Subclasses may override :meth:`check` for rules
    that span fields (e.g. "exactly one of room and code"); it returns a message or ``None``.
    """

    __slots__ = ()
    _fields_table: ClassVar[tuple[tuple[str, Spec, bool, Any], ...] | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields_table = None  # filled lazily: dataclass fields do not exist yet at this point

    @classmethod
    def fields_table(cls) -> tuple[tuple[str, Spec, bool, Any], ...]:
        """(name, spec, required, default) for each field, in declaration order."""
        if cls._fields_table is None:
            rows = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                required = f.default is dataclasses.MISSING
                rows.append((f.name, f.metadata["spec"], required, None if required else f.default))
            cls._fields_table = tuple(rows)
        return cls._fields_table

    def check(self) -> str | None:
        """Cross-field rule; return a problem description, or ``None`` when the record is valid."""
        return None

    @classmethod
    def load_fields(cls, raw: dict[Any, Any], limits: Limits) -> Any:
        """Validate a decoded map as this record: the compiled loader (:meth:`loader`) of the class."""
        return cls.loader()(raw, limits)

    @classmethod
    def loader(cls) -> _Loader:
        """This class's compiled loader: ``load_fields`` specialised to its field table, built once.

        The codec keeps these in its frame tables so that a decode costs one dict lookup and one call.
        """
        found = _LOADERS.get(cls)
        if found is None:
            found = _LOADERS[cls] = _compile_loader(cls)
        return found

    @classmethod
    def walk_fields(cls, raw: dict[Any, Any], limits: Limits) -> Any:
        """The definition of ``load_fields``: walk the field table, each spec's ``load`` in turn.

        The compiled loader inlines the common checks for valid input only and hands everything else
        (the first failed check, a spec it does not inline) to this walk, so every error code and
        message, and which of several problems is reported, stay exactly this walk's.
        """
        kwargs: dict[str, Any] = {}
        for name, spec, required, default in cls.fields_table():
            value = raw.get(name)
            if value is None:
                if required:
                    if name in raw:
                        raise FieldProblem(ErrorCode.BAD_FIELD, f"{name}: nil is not allowed")
                    raise FieldProblem(ErrorCode.MISSING_FIELD, f"{name}: required field is missing")
                kwargs[name] = default
                continue
            try:
                kwargs[name] = spec.load(value, limits)
            except FieldProblem as problem:
                raise FieldProblem(problem.code, f"{name}: {problem.message}") from None
        record = cls(**kwargs)
        rule = record.check()
        if rule is not None:
            raise FieldProblem(ErrorCode.BAD_FIELD, rule)
        return record

    def dump_fields(self, limits: Limits) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.dump_into(out, limits)
        return out

    def plain_into(self, out: dict[str, Any]) -> None:
        """Like :meth:`dump_into` without any check: for values this process built from data it
        already validated (the hot path of broadcasts). Enums and tuples need no conversion: msgpack
        packs str subclasses as strings and tuples as arrays."""
        for name, _spec, _required, _default in self.fields_table():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, WireRecord):
                value = value.plain_fields()
            elif type(value) is tuple and value and isinstance(value[0], WireRecord):
                value = [item.plain_fields() for item in value]
            out[name] = value

    def plain_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.plain_into(out)
        return out

    def dump_into(self, out: dict[str, Any], limits: Limits) -> None:
        for name, spec, required, _default in self.fields_table():
            value = getattr(self, name)
            if value is None:
                if required:
                    raise FieldProblem(ErrorCode.MISSING_FIELD, f"{name}: required field is None")
                continue
            try:
                out[name] = spec.dump(value, limits)
            except FieldProblem as problem:
                raise FieldProblem(problem.code, f"{name}: {problem.message}") from None
        rule = self.check()
        if rule is not None:
            raise FieldProblem(ErrorCode.BAD_FIELD, rule)


_LOADERS: dict[type[WireRecord], _Loader] = {}

_ID_PATTERN = r"[A-Za-z0-9_\-]+"
"""The pattern of room ids, codes and message ids, which the loaders check without the regex engine
(see ``_ID_CHECK``)."""
_ID_CHECK = "{v}.isascii() and {v}.replace('-', 'a').replace('_', 'a').isalnum()"
"""True exactly when ``{v}`` fully matches ``_ID_PATTERN``: ASCII letters, digits, ``_`` and ``-``,
not empty. The trap: ``str.isalnum`` accepts every Unicode letter and digit, hence ``isascii`` first.
``replace`` returns the string itself when there is nothing to replace: an id costs four C calls,
under half of ``fullmatch``."""


def _compile_loader(cls: type[WireRecord]) -> _Loader:
    """Generate ``cls``'s loader: straight-line code that accepts exactly what ``walk_fields`` accepts.

    Why generated: the walk spends most of a small frame's decode on its own machinery (a method
    call per spec, ``int(getattr(limits, ...))`` per string, a kwargs dict, the frozen dataclass
    ``__init__`` that calls ``object.__setattr__`` per field). The generated code checks ints,
    booleans, strings and enums inline, calls ``load`` for the other specs, fills the slots
    directly and calls ``check`` only where a class defines one.

    The invariant that keeps every error code and message: it returns a record only for input
    whose every check passed, equal to what the walk returns; at the first doubt it returns
    ``walk_fields(raw, limits)``, which raises the walk's error (or, for a check the fast code
    makes stricter than the spec, accepts). tests/test_protocol_decode_equivalence.py
    holds it to the walk of the old codec on arbitrary input.
    """
    # The record is built as an instance of a twin class (same base, same slots, no frozen
    # __setattr__) whose slots are filled by plain attribute stores, then turned into ``cls`` by
    # assigning ``__class__`` (CPython allows it between classes of the same layout): a third of
    # the cost of ``object.__new__`` plus a slot descriptor's ``__set__`` per field, and a sixth
    # of the dataclass ``__init__`` (``object.__setattr__`` per field). The twin never escapes.
    twin = type(f"_{cls.__name__}Twin", (cls.__base__,), {"__slots__": cls.__slots__})  # type: ignore[attr-defined]
    env: dict[str, Any] = {"cls": cls, "twin": twin, "walk": cls.walk_fields, "FieldProblem": FieldProblem,
                           "int": int, "str": str, "bool": bool, "len": len, "type": type}
    body = ["def load(raw, limits, wire=None):", "    get = raw.get"]
    sets = []
    for i, (name, spec, required, default) in enumerate(cls.fields_table()):
        v = f"v{i}"
        body.append(f"    {v} = get({name!r})")
        check = _inline_check(spec, v, i, env)
        if required and type(spec) in _NIL_REFUSING:
            body.extend("    " + line for line in check)  # nil or absent fails the type check: the walk says which
            sets.append(f"    obj.{name} = {v}")
            continue
        body.append(f"    if {v} is None:")
        if required:
            body.append("        return walk(raw, limits)")
        else:
            env[f"d{i}"] = default
            body.append(f"        {v} = d{i}")
        body.append("    else:")
        body.extend("        " + line for line in check)
        sets.append(f"    obj.{name} = {v}")
    body.append("    obj = twin()")
    body.extend(sets)
    body.append("    obj.__class__ = cls")
    if cls.check is not WireRecord.check:
        body.append("    if obj.check() is not None:")
        body.append("        return walk(raw, limits)")
    body.append("    return obj")
    exec("\n".join(body), env)  # noqa: S102 - source built above from the field table, no outside text
    loader: _Loader = env["load"]
    return loader


_NIL_REFUSING = (Int, Bool, Str, Enum)
"""Specs whose inline check (``_inline_check``) refuses ``None`` by itself."""


def _inline_check(spec: Spec, v: str, i: int, env: dict[str, Any]) -> list[str]:
    """Lines that check (and convert) a present value ``v`` of ``spec``, sending doubts to the walk."""
    doubt = "return walk(raw, limits)"
    if type(spec) is Int:
        return [f"if type({v}) is not int or not {spec.lo} <= {v} <= {spec.hi}:", f"    {doubt}"]
    if type(spec) is Bool:
        return [f"if type({v}) is not bool:", f"    {doubt}"]
    if type(spec) is Str:
        top = spec.max_len if isinstance(spec.max_len, int) else f"int(limits.{spec.max_len})"
        lines = [f"if type({v}) is not str or not {spec.min_len} <= len({v}) <= {top}:", f"    {doubt}"]
        if spec.pattern == _ID_PATTERN:
            lines += [f"if not ({_ID_CHECK.format(v=v)}):", f"    {doubt}"]
        elif spec._regex is not None:
            env[f"m{i}"] = spec._regex.fullmatch
            lines += [f"if m{i}({v}) is None:", f"    {doubt}"]
        return lines
    if type(spec) is Enum:
        env[f"e{i}"] = {member.value: member for member in spec.enum_type}.get
        return [f"{v} = e{i}({v}) if type({v}) is str else None", f"if {v} is None:", f"    {doubt}"]
    env[f"l{i}"] = spec.load
    if type(spec) is Opaque and spec.max_bytes is not None:
        env[f"u{i}"] = spec.load_unmeasured
        load = f"u{i}({v}, limits) if wire is not None and 2 * wire <= limits.{spec.max_bytes} else l{i}({v}, limits)"
        return ["try:", f"    {v} = {load}", "except FieldProblem:", f"    {doubt}"]
    return ["try:", f"    {v} = l{i}({v}, limits)", "except FieldProblem:", f"    {doubt}"]
