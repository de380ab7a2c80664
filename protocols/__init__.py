"""qbench wire protocol: message types, framing and version. Depends on nothing of qbench."""

from .codec import decode, encode
from .messages import ErrorCode, ErrorInfo, Message, MsgType, ProtocolError
from .version import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "ErrorCode", "ErrorInfo", "Message", "MsgType", "ProtocolError", "decode", "encode"]
