"""``@record`` and ``@mutable_record`` behave as the dataclasses they replace, without compiling methods per class."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from pyoci.runtime import spec
from pyoci.runtime.records import mutable_record, record


@dataclass(frozen=True, slots=True)
class FrozenDC:
    a: int
    b: tuple[int, ...] = ()
    c: list[int] = field(default_factory=list)


@record
class FrozenRec:
    a: int
    b: tuple[int, ...] = ()
    c: list[int] = field(default_factory=list)


@dataclass
class MutableDC:
    a: int = 0
    d: dict[str, int] = field(default_factory=dict)


@mutable_record
class MutableRec:
    a: int = 0
    d: dict[str, int] = field(default_factory=dict)


def _same(made, expected) -> None:
    assert repr(made) == repr(expected).replace(type(expected).__name__, type(made).__name__)


def test_a_frozen_record_behaves_as_a_frozen_slotted_dataclass():
    for cls, ref in ((FrozenRec, FrozenDC), (MutableRec, MutableDC)):
        assert dataclasses.is_dataclass(cls)
        assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in dataclasses.fields(ref)]
        assert cls.__match_args__ == ref.__match_args__
    r, d = FrozenRec(1, (2,)), FrozenDC(1, (2,))
    _same(r, d)
    assert r == FrozenRec(1, (2,), []) and r != FrozenRec(2) and r != d
    assert r.c == [] and r.c is not FrozenRec(1).c  # default_factory per instance
    assert dataclasses.asdict(r) == dataclasses.asdict(d)
    assert dataclasses.replace(r, a=5) == FrozenRec(5, (2,))
    assert hash(FrozenRec(1, (2,), None)) == hash(FrozenDC(1, (2,), None))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(r)  # a list field, as the dataclass
    assert not hasattr(r, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'a'"):
        r.a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'a'"):
        del r.a  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r


def test_a_mutable_record_behaves_as_a_dataclass():
    r, d = MutableRec(), MutableDC()
    _same(r, d)
    r.a = 3
    r.d["x"] = 1
    assert r == MutableRec(3, {"x": 1}) and r != MutableRec()
    assert MutableRec.__hash__ is None and MutableDC.__hash__ is None
    assert dataclasses.asdict(r) == {"a": 3, "d": {"x": 1}}
    d.a, d.d = 3, {"x": 1}
    r.d["self"] = r  # type: ignore[assignment]
    d.d["self"] = d  # type: ignore[assignment]
    _same(r, d)  # recursion shown as "...", as dataclass's repr does


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: FrozenRec(), "missing required argument 'a'"),
        (lambda: FrozenRec(1, (), [], 4), "takes 3 positional arguments but 4 were given"),
        (lambda: FrozenRec(1, a=2), "multiple values for argument 'a'"),
        (lambda: FrozenRec(1, z=2), "unexpected keyword argument 'z'"),
    ],
)
def test_wrong_arguments_are_type_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_what_records_do_not_do_is_refused():
    with pytest.raises(TypeError, match="only defaults and default_factory"):

        @record
        class _Bad:
            a: int = field(default=0, repr=False)

    with pytest.raises(TypeError, match="cannot derive"):

        @mutable_record
        class _Derived(MutableDC):
            b: int = 0

    with pytest.raises(TypeError, match="no ClassVar"):

        @record
        class _ClassVar:
            a: ClassVar[int] = 0

    with pytest.raises(TypeError, match="no __post_init__"):

        @record
        class _Post:
            a: int

            def __post_init__(self) -> None:
                pass


def test_the_spec_model_uses_the_shared_methods():
    """No class of the spec's model has methods of its own compiled by ``@dataclass`` (they cost ~1.5 ms each)."""
    models = [v for v in vars(spec).values() if isinstance(v, type) and dataclasses.is_dataclass(v)]
    assert len(models) > 20
    for cls in models:
        for name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__"):
            assert name not in vars(cls), f"{cls.__name__}.{name}"
    process = spec.Process(args=("true",))
    assert dataclasses.replace(process, cwd="/tmp") == spec.Process(("true",), "/tmp")
    assert repr(spec.Root("/r")) == "Root(path='/r', readonly=False)"
    assert spec.Root.__annotations__ == {"path": "str", "readonly": "bool"}
    assert [f.type for f in dataclasses.fields(spec.Root)] == ["str", "bool"]
