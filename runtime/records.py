"""Dataclasses that cost nothing to define: shared methods instead of the ones ``@dataclass`` compiles per class.

``@dataclass(frozen=True, slots=True)`` compiles six functions for every class (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``) and runs ``inspect.signature`` on it: ~1.5 ms a class,
~60 ms for the spec's model, paid by every ``pyoci`` command and every cold shim. :func:`record` (frozen,
slotted) and :func:`mutable_record` (a plain ``@dataclass``) make the same classes with methods written once
here. They stay dataclasses (``dataclasses.fields``, ``replace``, ``asdict`` work) and behave as the generated
methods do: same ``repr``, equality, hashing, ``FrozenInstanceError``, pickling; only the argument errors of
``__init__`` are worded differently. Fields take defaults and ``field(default_factory=...)``; other ``field()``
options, ``__post_init__`` and base classes are refused.
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, fields
from reprlib import recursive_repr

TYPE_CHECKING = False  # typing itself costs ~3 ms to import; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

_SETATTR = object.__setattr__
_SPECIAL = ("ClassVar", "InitVar", "KW_ONLY")  # annotations dataclass() treats apart


def _init(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    cls = type(self)
    spec = cls.__record_fields__
    if len(args) > len(spec):
        raise TypeError(f"{cls.__qualname__}() takes {len(spec)} positional arguments but {len(args)} were given")
    for i, (name, default, factory) in enumerate(spec):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{cls.__qualname__}() got multiple values for argument {name!r}")
            value = args[i]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif default is not MISSING:
            value = default
        elif factory is not MISSING:
            value = factory()
        else:
            raise TypeError(f"{cls.__qualname__}() missing required argument {name!r}")
        _SETATTR(self, name, value)
    if kwargs:  # what is left named no field
        raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument {next(iter(kwargs))!r}")


def _values(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, name) for name in type(self).__record_names__])


@recursive_repr()  # as dataclass's: a record that contains itself shows "..." there
def _repr(self: Any) -> str:
    cls = type(self)
    return f"{cls.__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in cls.__record_names__)})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


class _Record:
    """What frozen and mutable records share: ``__init__`` from the field table, dataclass's repr and equality."""

    __slots__ = ()
    __record_fields__: tuple[tuple[str, Any, Any], ...] = ()
    __record_names__: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init(self, args, kwargs)

    __repr__ = _repr
    __eq__ = _eq


class _Frozen(_Record):
    """The shared methods of ``@dataclass(frozen=True, slots=True)``."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(_values(self))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __getstate__(self) -> list[Any]:
        return list(_values(self))

    def __setstate__(self, state: list[Any]) -> None:
        for name, value in zip(type(self).__record_names__, state, strict=False):
            _SETATTR(self, name, value)


class _Mutable(_Record):
    """The shared methods of a plain ``@dataclass`` (mutable, so unhashable; instances have a ``__dict__``)."""

    __hash__ = None  # type: ignore[assignment]


def _make(cls: type, base: type, slots: bool) -> Any:
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__qualname__}: a record cannot derive from another class")
    annotations = dict(cls.__annotations__)
    if not cls.__dict__.get("__doc__"):
        cls.__doc__ = f"{cls.__name__}({', '.join(annotations)})"  # else dataclass() runs inspect.signature on it
    if "__post_init__" in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: a record has no __post_init__")
    shown = {}
    for name, annotation in annotations.items():
        if isinstance(annotation, str):
            if any(word in annotation for word in _SPECIAL):
                raise TypeError(f"{cls.__qualname__}.{name}: a record has no ClassVar, InitVar or KW_ONLY")
            annotation = object
        shown[name] = annotation
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    # dataclass() parses every string annotation three times over (ClassVar? InitVar? KW_ONLY?): a third of its
    # time here. Those were refused above, so it is shown placeholders, and the annotations are put back after.
    body["__annotations__"] = shown
    made = dataclass(type(cls.__name__, (base,), body), init=False, repr=False, eq=False, slots=slots)
    made.__annotations__ = annotations
    spec = []
    for f in fields(made):
        if not (f.init and f.repr and f.compare and f.hash is None and not f.kw_only):
            raise TypeError(f"{cls.__qualname__}.{f.name}: only defaults and default_factory are supported")
        f.type = annotations[f.name]
        spec.append((f.name, f.default, f.default_factory))
    made.__qualname__ = cls.__qualname__
    made.__record_fields__ = tuple(spec)
    made.__record_names__ = tuple(name for name, _, _ in spec)
    return made


def record(cls: type) -> Any:
    """``@dataclass(frozen=True, slots=True)``, with shared methods."""
    return _make(cls, _Frozen, slots=True)


def mutable_record(cls: type) -> Any:
    """``@dataclass``, with shared methods."""
    return _make(cls, _Mutable, slots=False)
