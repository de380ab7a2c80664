"""Values of secret-bearing options, kept out of what qbench stores (report.json, the results database).

A delegate may take a licence token or a password (``--delegate-option token=...``); the report
records the command line and the runner's options so a run can be repeated, and those copies
keep every key but show :data:`MASK` for the value of any key that names a secret.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

MASK = "***"
#: option or key names that carry secrets: api_key, token, secret, password, passwd, credential(s), auth
_SECRET = re.compile(r"key|token|secret|passw|credential|auth", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the value of every secret-named key masked."""
    return {k: (MASK if is_secret(str(k)) else v) for k, v in options.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with secret values masked: ``k=v`` items with a secret ``k`` (``--delegate-option
    token=v``, ``--delegate-option=token=v``), and the value of an option whose own name is secret-bearing
    (``--api-token v``, ``--api-token=v``)."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        option, eq, value = arg.partition("=")
        if arg.startswith("--") and is_secret(option):
            out.append(f"{option}={MASK}" if eq else arg)
            mask_next = not eq
        elif arg.startswith("--") and eq:
            out.append(f"{option}={_redact_item(value)}")
        else:
            out.append(_redact_item(arg))
    return out


def _redact_item(item: str) -> str:
    key, eq, _ = item.partition("=")
    return f"{key}={MASK}" if eq and is_secret(key) else item


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A report's ``settings`` with :func:`redact_argv` and :func:`redact_options` applied where they belong."""
    out = dict(settings)
    if isinstance(out.get("argv"), list):
        out["argv"] = redact_argv([str(a) for a in out["argv"]])
    runner = out.get("runner")
    if isinstance(runner, Mapping):
        runner = dict(runner)
        for name in ("delegate_options",):
            if isinstance(runner.get(name), Mapping):
                runner[name] = redact_options(runner[name])
        if isinstance(runner.get("provider_options"), list):
            runner["provider_options"] = [redact_options(o) if isinstance(o, Mapping) else o
                                          for o in runner["provider_options"]]
        out["runner"] = runner
    return out
