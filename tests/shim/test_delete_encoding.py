"""The hand-encoded DeleteResponse of the fast ``delete`` path is byte-for-byte protobuf's."""

import pytest

from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.shim.delete import encode_delete_response


@pytest.mark.parametrize(
    "pid, status, ns",
    [(0, 137, 1_700_000_000_123_456_789), (1, 0, 0), (4242, 137, 5 * 10**9), (2**31, 255, 999_999_999), (7, 1, 1)],
)
def test_matches_protobuf(pid, status, ns):
    expected = task_pb2.DeleteResponse(pid=pid, exit_status=status)
    expected.exited_at.seconds, expected.exited_at.nanos = divmod(ns, 10**9)
    expected.exited_at.SetInParent()
    assert encode_delete_response(pid, status, ns) == expected.SerializeToString()
