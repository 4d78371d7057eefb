"""Decode once: the stored wire form read back into typed payloads without validating it again.

Every event is validated in full at ingest (domain/validation.py) before it is journalled; what the
journal and Kafka hold is written by us from a validated envelope. Readers therefore need the
*shape* checked, not the content: each field's JSON type (so that a clear phone where the sealed
object belongs, or a body from somewhere else, is refused), enums and date-times converted, nested
models built. Patterns and ranges were judged at ingest and are not judged again.

A body that does not have the stored shape falls back to full pydantic validation, so what a
reader gets for it (a `ValidationError`, a `ValueError`, naming the field) is exactly what it got
before; a body of the stored shape gives a model equal to the validated one (tests/unit/test_wire.py
checks both for every registered type and version)."""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar, Union, cast, get_args, get_origin

from pydantic import AwareDatetime, BaseModel

from domain.events import CURRENT_VERSION, PAYLOADS

__all__ = ["aware_datetime", "build", "decode_payload", "reader"]

M = TypeVar("M", bound=BaseModel)
Convert = Callable[[Any], Any]


class _Shape(Exception):
    """The body is not of the stored shape: validate it in full for the precise error."""


def aware_datetime(value: object, name: str) -> datetime:
    """An ISO-8601 date-time with its offset, as the wire writes them (`isoformat()`)."""
    if not isinstance(value, str):
        # ValueError, not TypeError: readers dead-letter a malformed body on ValueError/KeyError.
        raise ValueError(f"{name!r} must be an ISO-8601 string, got {type(value).__name__}")  # noqa: TRY004
    parsed = datetime.fromisoformat(value)  # ValueError names the string
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name!r} has no UTC offset: {value!r}")
    return parsed


# A field's plan: its name, the exact JSON type its value must have, how to convert that value
# (None: taken as it is), whether null is allowed, and its default (_REQUIRED: none).
_REQUIRED = object()
FieldPlan = tuple[str, type, Convert | None, bool, Any]
Plan = tuple[FieldPlan, ...]
_PLANS: dict[type[BaseModel], Plan] = {}


def _enum(kind: type[Enum]) -> Convert:
    members = {m.value: m for m in kind}  # a dict lookup: calling the enum costs ten times more

    def convert(v: Any) -> Any:
        member = members.get(v)
        if member is None:
            raise _Shape
        return member
    return convert


def _literal(allowed: tuple[object, ...]) -> Convert:
    def check(v: Any) -> Any:
        if v not in allowed:
            raise _Shape
        return v
    return check


def _datetime(v: Any) -> Any:
    try:
        return aware_datetime(v, "")
    except ValueError:
        raise _Shape from None


def _nested(model: type[BaseModel]) -> Convert:
    return _decoder(model)


def _tuple_of(json_type: type, convert: Convert | None) -> Convert:
    def each(v: Any) -> Any:
        if type(v) is not json_type:
            raise _Shape
        return v if convert is None else convert(v)
    return lambda v: tuple(each(x) for x in v)


def _str_dict(v: Any) -> Any:
    if not all(type(k) is str and type(x) is str for k, x in v.items()):
        raise _Shape
    return v


def _bare(ann: Any) -> Any:
    return _bare(get_args(ann)[0]) if get_origin(ann) is Annotated else ann


def _field(ann: Any) -> tuple[type, Convert | None, bool]:
    """How to read a field of this annotation: (JSON type, conversion, null allowed)."""
    ann = _bare(ann)
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(ann) if a is not type(None)]
        if len(members) == 1 and len(get_args(ann)) == 2:
            json_type, convert, _ = _field(members[0])
            return json_type, convert, True
    elif origin is Literal:
        values = get_args(ann)
        if all(type(v) is str for v in values):
            return str, _literal(values), False
    elif origin is tuple:
        args = get_args(ann)
        if len(args) == 2 and args[1] is Ellipsis:
            json_type, convert, nullable = _field(args[0])
            if not nullable:
                return list, _tuple_of(json_type, convert), False
    elif origin is dict:
        if all(_bare(a) is str for a in get_args(ann)):
            return dict, _str_dict, False
    elif isinstance(ann, type):
        if ann is datetime or ann is AwareDatetime:
            return str, _datetime, False
        if issubclass(ann, Enum) and issubclass(ann, str):
            return str, _enum(ann), False
        if issubclass(ann, BaseModel):
            return dict, _nested(ann), False
        if ann in (str, int, bool):
            return ann, None, False
    # A new kind of field: teach the decoder, or a stored event of its type would not be read.
    raise TypeError(f"no wire decoder for fields of type {ann!r}")


def _default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    if field.is_required():
        return _REQUIRED
    # Shared by every instance the decoder builds (pydantic would copy it): immutable only.
    if not isinstance(field.default, str | int | bool | float | tuple | frozenset | None):
        raise TypeError(f"{model.__name__}.{name}: a mutable default cannot be decoded once")
    return field.default


def _plan(model: type[BaseModel]) -> Plan:
    plan = _PLANS.get(model)
    if plan is None:
        plan = tuple((name, *_field(f.annotation), _default(model, name))
                     for name, f in model.model_fields.items())
        _PLANS[model] = plan
    return plan


_new = object.__new__
_set = object.__setattr__
# BaseModel's slots, set through their descriptors (frozen models refuse __setattr__).
_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_private = BaseModel.__dict__["__pydantic_private__"].__set__


def build(model: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """An instance of `model` holding `values` (every field), as pydantic's `model_construct`
    makes one, without its per-field default handling (which costs more than validating)."""
    obj = _new(model)
    _set(obj, "__dict__", values)
    _fields_set(obj, fields_set)
    _extra(obj, None)
    _private(obj, None)
    return obj


Decoder = Callable[[dict[str, Any]], Any]
_DECODERS: dict[type[BaseModel], Decoder] = {}


def _decoder(model: type[BaseModel]) -> Decoder:
    """A function reading `model` from a JSON object of its stored shape (raising _Shape for any
    other), written out field by field from the model's plan: a loop over the plan costs as much
    as pydantic's own validation, straight-line code a third of it."""
    decoder = _DECODERS.get(model)
    if decoder is not None:
        return decoder
    env: dict[str, Any] = {"_Shape": _Shape, "_R": _REQUIRED, "build": build, "model": model}
    lines = ["def decode(b):", "    if type(b) is not dict: raise _Shape", "    n = 0"]
    names, required = [], 0
    for i, (name, json_type, convert, nullable, default) in enumerate(_plan(model)):
        env[f"T{i}"], env[f"C{i}"], env[f"D{i}"] = json_type, convert, default
        v = f"v{i}"
        wrong = f"type({v}) is not T{i}"
        if nullable:
            wrong = f"{v} is not None and {wrong}"
        read = [f"if {wrong}: raise _Shape"]
        if convert is not None:
            read.append(f"if {v} is not None: {v} = C{i}({v})" if nullable else f"{v} = C{i}({v})")
        lines.append(f"    {v} = b.get({name!r}, _R)")
        if default is _REQUIRED:
            required += 1
            lines.append(f"    if {v} is _R: raise _Shape")
            lines += [f"    {line}" for line in read]
        else:
            lines.append(f"    if {v} is _R: {v} = D{i}")
            lines.append("    else:")
            lines += [f"        {line}" for line in [*read, "n += 1"]]
        names.append(f"{name!r}: {v}")
    # Models forbid extras: every key of the body must have been one of the fields.
    lines.append(f"    if len(b) != n + {required}: raise _Shape")
    lines.append(f"    return build(model, {{{', '.join(names)}}}, set(b))")
    source = "\n".join(lines)
    exec(source, env)  # noqa: S102 - built above from the model's own fields, nothing read
    env["decode"].__doc__ = source
    decoder = _DECODERS[model] = cast(Decoder, env["decode"])
    return decoder


def reader(model: type[M]) -> Callable[[object], M]:
    """`decode_payload` for one model, looked up once (readers call it for every event)."""
    decode = _decoder(model)

    def read(body: object) -> M:
        try:
            return cast(M, decode(cast(dict[str, Any], body)))
        except _Shape:
            return model.model_validate(body)
    return read


def decode_payload(model: type[M], body: object) -> M:
    """`body` (a stored payload, already upcast to `model`'s version) as `model`, unvalidated if
    it has the stored shape, else validated in full (raising pydantic's ValidationError)."""
    if isinstance(body, dict):
        try:
            return cast(M, _decoder(model)(body))
        except _Shape:
            pass
    return model.model_validate(body)


# Every stored model gets its decoder at import: a field kind the decoder cannot read fails here.
for (_type, _version), _model in PAYLOADS.items():
    if _version == CURRENT_VERSION[_type]:
        _decoder(_model)
