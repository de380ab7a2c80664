"""Whether ONNX Runtime's int8 kernels on this machine saturate with 8-bit weights (x86 with AVX2 and no
VNNI: their int16 pair sums clip), the rule `--reduce-range auto` follows (host/quantize/reduce_range.py).

Tests that quantize with a quantizer directly and then compare the deployed int8 kernels with QDQ
arithmetic ask for 7-bit weights where they saturate, as qbench does: otherwise the kernels compute
clipped sums that no QDQ arithmetic reproduces."""

from __future__ import annotations

import platform

from qbench.agent.cpu import int8_features
from qbench.host.quantize.reduce_range import saturates

REDUCE_RANGE = saturates(platform.machine(), int8_features(platform.machine()))
#: for patterns built for 8-bit weights, whose conclusions the tests check against measurements
EIGHT_BIT_PATTERN = "a pattern built for 8-bit weights; this CPU's u8s8 kernels saturate, so qbench quantizes with 7"
