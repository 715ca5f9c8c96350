"""``google.protobuf.Any`` the containerd way: the type URL is the bare full message name.

containerd resolves type URLs by exact name (``containerd.events.TaskExit``,
``io.containerd.cgroups.v1.Metrics``); protobuf's own ``Any.Pack`` would add a ``type.googleapis.com/``
prefix that containerd 1.6 cannot resolve. JSON payloads (OCI Process, LinuxResources) come under
``types.containerd.io/opencontainers/runtime-spec/1/...`` URLs with JSON bytes as the value.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def type_url(message: Message | type[Message]) -> str:
    """The type URL containerd registers for a message: its full protobuf name."""
    return message.DESCRIPTOR.full_name


def pack(message: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url(message), value=message.SerializeToString())


def unpack(value: any_pb2.Any, cls: type[M]) -> M:
    """Decode ``value`` as ``cls``; ``TypeError`` when the type URL names another message."""
    name = value.type_url.rsplit("/", 1)[-1]
    if name != cls.DESCRIPTOR.full_name:
        raise TypeError(f"Any holds {value.type_url!r}, expected {cls.DESCRIPTOR.full_name}")
    msg = cls()
    msg.ParseFromString(value.value)
    return msg
