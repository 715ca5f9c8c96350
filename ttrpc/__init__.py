"""An asyncio ttrpc client and server (containerd/ttrpc's wire protocol), with a sans-IO codec at the core.

No containerd knowledge lives here: services are registered from protobuf service descriptors.
"""

from .codec import MAX_MESSAGE, Frame, FrameDecoder, FrameType, ProtocolError, encode_frame
from .status import Code, TtrpcError

__all__ = [
    "MAX_MESSAGE",
    "Code",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "ProtocolError",
    "TtrpcError",
    "encode_frame",
]
