"""How a host hands an agent the CURVE keys of one run (see "Authentication" in ``protocols/README.md``).

The host makes two fresh CURVE key pairs per run, the agent's and its own, and writes one line
on the agent's stdin as it starts (never on its command line, which every local user can read)::

    QBENCH_KEYS <agent secret key, Z85> <host public key, Z85>

The agent serves CURVE with that secret key and lets in only a client holding the host's key, so a
request from anyone else never reaches it; CURVE also encrypts every frame and rejects replayed or
altered ones (its nonces), so nothing above ZeroMQ needs signing.
"""

from __future__ import annotations

import re

KEYS_PREFIX = "QBENCH_KEYS"
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def keys_line(agent_secret: bytes, host_public: bytes) -> bytes:
    """The stdin line (with its newline) giving an agent its keys; keys are 40-character Z85 strings."""
    return b" ".join([KEYS_PREFIX.encode(), agent_secret, host_public]) + b"\n"


def parse_keys_line(line: bytes) -> tuple[bytes, bytes]:
    """(agent secret key, host public key) from :func:`keys_line`'s line.

    Raises:
        ValueError: not such a line (the agent then refuses to start).
    """
    parts = line.strip().split(b" ")
    if len(parts) != 3 or parts[0] != KEYS_PREFIX.encode() or not all(
            _Z85_KEY.fullmatch(p.decode("ascii", "replace")) for p in parts[1:]):
        raise ValueError(f"expected '{KEYS_PREFIX} <secret key> <client key>' (two 40-character Z85 keys) on stdin")
    return parts[1], parts[2]
