"""The committed protobuf modules: fresh, and naming things exactly as containerd does."""

import subprocess
import sys
from pathlib import Path

import pytest

from pyoci.protos import (
    cgroups_v1_metrics_pb2,
    cgroups_v2_metrics_pb2,
    containerd_events_pb2,
    containerd_events_ttrpc_pb2,
    containerd_task_v2_pb2,
    runc_options_pb2,
    typeurl,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_generated_code_is_not_stale():
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "message, url",
    [
        (containerd_events_pb2.TaskCreate, "containerd.events.TaskCreate"),
        (containerd_events_pb2.TaskStart, "containerd.events.TaskStart"),
        (containerd_events_pb2.TaskDelete, "containerd.events.TaskDelete"),
        (containerd_events_pb2.TaskExit, "containerd.events.TaskExit"),
        (containerd_events_pb2.TaskOOM, "containerd.events.TaskOOM"),
        (containerd_events_pb2.TaskExecAdded, "containerd.events.TaskExecAdded"),
        (containerd_events_pb2.TaskExecStarted, "containerd.events.TaskExecStarted"),
        (containerd_events_pb2.TaskPaused, "containerd.events.TaskPaused"),
        (containerd_events_pb2.TaskResumed, "containerd.events.TaskResumed"),
        (containerd_events_pb2.TaskCheckpointed, "containerd.events.TaskCheckpointed"),
        (cgroups_v1_metrics_pb2.Metrics, "io.containerd.cgroups.v1.Metrics"),
        (cgroups_v2_metrics_pb2.Metrics, "io.containerd.cgroups.v2.Metrics"),
        (runc_options_pb2.Options, "containerd.runc.v1.Options"),
        (runc_options_pb2.ProcessDetails, "containerd.runc.v1.ProcessDetails"),
    ],
)
def test_any_type_urls_are_containerds_bare_names(message, url):
    packed = typeurl.pack(message())
    assert packed.type_url == url
    assert isinstance(typeurl.unpack(packed, message), message)


def test_unpack_refuses_another_type():
    with pytest.raises(TypeError, match=r"containerd\.events\.TaskOOM"):
        typeurl.unpack(typeurl.pack(containerd_events_pb2.TaskOOM()), containerd_events_pb2.TaskExit)


def test_service_names_and_wire_field_numbers():
    assert containerd_task_v2_pb2.DESCRIPTOR.services_by_name["Task"].full_name == "containerd.task.v2.Task"
    events = containerd_events_ttrpc_pb2.DESCRIPTOR.services_by_name["Events"]
    assert events.full_name == "containerd.services.events.ttrpc.v1.Events"
    # A DeleteResponse{pid=1, exit_status=137} is what containerd parses from the shim's `delete`.
    wire = containerd_task_v2_pb2.DeleteResponse(pid=1, exit_status=137).SerializeToString()
    assert wire == b"\x08\x01\x10\x89\x01"
    fields = {f.name: f.number for f in containerd_task_v2_pb2.CreateTaskRequest.DESCRIPTOR.fields}
    assert fields == {
        "id": 1,
        "bundle": 2,
        "rootfs": 3,
        "terminal": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "checkpoint": 8,
        "parent_checkpoint": 9,
        "options": 10,
    }
    assert len(containerd_task_v2_pb2.DESCRIPTOR.services_by_name["Task"].methods) == 17
