"""The protocol version: the only copy. ``protocols/README.md`` is pinned to it by a test."""

PROTOCOL_VERSION = "2.3"


def compatible(theirs: str) -> bool:
    """Peers interoperate when the major versions agree; minors only add fields."""
    return str(theirs).split(".")[0] == PROTOCOL_VERSION.split(".")[0]
