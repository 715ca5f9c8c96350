"""``containerd-shim-pyoci-v2 -info``: a ``containerd.types.RuntimeInfo`` with the OCI features JSON."""

from __future__ import annotations

import json
import sys


def write_info() -> int:
    from google.protobuf import any_pb2

    from pyoci.protos import containerd_types_pb2
    from pyoci.runtime import __version__
    from pyoci.runtime.features import features

    from .flags import RUNTIME_TYPE

    info = containerd_types_pb2.RuntimeInfo(
        name=RUNTIME_TYPE,
        version=containerd_types_pb2.RuntimeVersion(version=__version__),
        features=any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/features/Features",
            value=json.dumps(features()).encode(),
        ),
    )
    sys.stdout.buffer.write(info.SerializeToString())
    return 0
