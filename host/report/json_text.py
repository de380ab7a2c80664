"""``json.dumps`` of a report, byte for byte, in two thirds of its time (and both texts in three fifths).

With ``indent`` set, Python's json module encodes in pure Python, one item at a time; a report holds
about 150,000 numbers in lists (value histograms, per-channel weight figures), which takes most of
that time. Here each list of plain numbers is encoded in one call of the C encoder, and indented by
text substitution; everything else still goes through ``json.dumps``, with a placeholder string where
each such list was. The text is the same: the C encoder writes ints and floats with the same ``repr``
as the pure-Python one, and refuses NaN and infinity the same way. :func:`encode` also gives the
compact text (the results database's copy) from the same encoded lists.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_NUMBERS = {int, float}  # exact types: bool is not one, and numpy scalars keep json's own handling


def dumps(obj: Any, indent: int = 2) -> str:
    """The text of ``json.dumps(obj, indent=indent, allow_nan=False)``.

    Raises:
        ValueError: NaN or infinity in ``obj``.
        TypeError: a value JSON cannot hold.
    """
    return _Lists(obj).indented(indent)


def encode(obj: Any, indent: int = 2) -> tuple[str, str]:
    """The texts of ``json.dumps(obj, indent=indent, allow_nan=False)`` and ``json.dumps(obj, allow_nan=False)``.

    Both at once: most of the time goes to the numbers, which are written once for both.

    Raises:
        ValueError: NaN or infinity in ``obj``.
        TypeError: a value JSON cannot hold.
    """
    lists = _Lists(obj)
    return lists.indented(indent), lists.compact()


class _Lists:
    """``obj`` with each non-empty list of plain numbers replaced by a placeholder string, and those lists' JSON."""

    def __init__(self, obj: Any):
        nonce = uuid.uuid4().hex  # a placeholder no string of the report can spell by chance
        self.texts: list[str] = []  # compact JSON of placeholder n's list
        self.obj = self._strip(obj, f"\0{nonce}:")
        self.placeholder = re.compile(rf'"\\u0000{nonce}:(\d+)"')

    def _strip(self, obj: Any, prefix: str) -> Any:
        if type(obj) is dict:
            return {key: self._strip(value, prefix) for key, value in obj.items()}
        if type(obj) in (list, tuple):
            if obj and set(map(type, obj)) <= _NUMBERS:
                self.texts.append(json.dumps(obj, allow_nan=False))
                return f"{prefix}{len(self.texts) - 1}"
            return [self._strip(value, prefix) for value in obj]
        return obj

    def compact(self) -> str:
        text = json.dumps(self.obj, allow_nan=False)
        return self.placeholder.sub(lambda match: self.texts[int(match.group(1))], text)

    def indented(self, indent: int) -> str:
        text = json.dumps(self.obj, indent=indent, allow_nan=False)
        step = " " * indent
        pieces, done = [], 0
        for match in self.placeholder.finditer(text):
            # a placeholder ends its line's item: the list's items go one level deeper than that line
            line = text[text.rfind("\n", 0, match.start()) + 1:match.start()]
            pad = " " * (len(line) - len(line.lstrip(" ")))
            items = self.texts[int(match.group(1))][1:-1].replace(", ", f",\n{pad}{step}")
            pieces += [text[done:match.start()], f"[\n{pad}{step}{items}\n{pad}]"]
            done = match.end()
        pieces.append(text[done:])
        return "".join(pieces)
