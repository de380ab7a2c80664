"""Whether qbench quantizes an ONNX model's weights to 7 bits for a device: ``--reduce-range`` auto, on or off.

On x86, ONNX Runtime runs int8 convolutions and matmuls as uint8 activations x int8 weights. With
VNNI (:data:`VNNI`) the products are summed in int32; with AVX2 alone (AVX512BW too) the kernels add
each pair of products in int16 with VPMADDUBSW, which saturates when weights use the full 8-bit
range and costs several dB of output PSNR (pplcnet-orientation: 35.8 dB with 8-bit weights, 41.6 dB
with 7-bit ones, on an AMD EPYC). Auto therefore takes 7-bit weights exactly where those kernels run,
as the device's agent reports its CPU (``hello_reply.machine`` and ``cpu_features``), and full 8-bit
weights everywhere else (ARM, VNNI CPUs, and CPUs whose features are unknown).

``compare`` measures one int8 file on all its targets, so it asks every target's agent first and
decides once for all of them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from qbench.protocols.messages import HelloReply

#: x86 features with which ONNX Runtime's u8s8 kernels sum in int32 (no int16 pair sums to saturate)
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def saturates(machine: str, features: Sequence[str]) -> bool:
    """Whether ONNX Runtime's u8s8 kernels on this CPU sum pairs of products in int16: x86 with AVX2
    and none of :data:`VNNI`. False where the features are unknown (empty)."""
    return machine == "x86_64" and "avx2" in features and not any(f in features for f in VNNI)


def choose(requested: bool | None, hellos: Mapping[str, HelloReply | None]) -> tuple[bool, str]:
    """Whether to quantize weights to 7 bits, and why, in words for the report and the terminal.

    Args:
        requested: True (``--reduce-range``) or False (``--no-reduce-range``) decide; None is auto,
            decided from ``hellos``.
        hellos: the hello reply of each device the int8 model is made for, by device name (one for a
            run; every target's for ``compare``, which measures one int8 file on all of them); None
            for an agent that did not answer. Auto takes 7-bit weights only when every device that
            answered runs kernels that saturate; none answered: 8-bit weights.
    """
    if requested is not None:
        return requested, f"asked for ({'--reduce-range' if requested else '--no-reduce-range'})"
    known = {name: hello for name, hello in hellos.items() if hello is not None}
    if not known:
        return False, ("auto: no device's CPU was known when quantizing (the agent did not start): 8-bit weights; "
                       "--reduce-range for x86 devices without VNNI")
    if len(hellos) == 1:
        return _for_one(next(iter(known.values())))
    saturating = sorted(name for name, hello in known.items() if saturates(hello.machine, list(hello.cpu_features)))
    silent = sorted(set(hellos) - set(known))
    unknown = f"; {', '.join(silent)} did not answer before quantizing" if silent else ""
    if len(saturating) == len(known):
        return True, (f"auto: every device ({', '.join(saturating)}) is x86 without VNNI, whose int8 kernels "
                      f"saturate int16 sums with 8-bit weights{unknown}")
    if not saturating:
        return False, (f"auto: no device's int8 kernels saturate int16 sums ({', '.join(sorted(known))}): "
                       f"8-bit weights{unknown}")
    others = sorted(set(known) - set(saturating))
    return False, (f"auto: the devices differ (x86 without VNNI: {', '.join(saturating)}; others: {', '.join(others)}) "
                   f"and measure one int8 file: 8-bit weights, whose int16 sums lower the figures of "
                   f"{', '.join(saturating)}; compare those alone for 7-bit weights{unknown}")


def _for_one(hello: HelloReply) -> tuple[bool, str]:
    features = list(hello.cpu_features)
    if saturates(hello.machine, features):
        return True, (f"auto: x86 without VNNI ({' '.join(features)}), whose int8 kernels saturate int16 sums "
                      "with 8-bit weights")
    if hello.machine == "x86_64":
        vnni = [f for f in features if f in VNNI]
        if vnni:
            return False, f"auto: x86 with {' '.join(vnni)}: int8 kernels sum in int32, 8-bit weights"
        return False, "auto: x86 with no AVX2 reported (or no CPU features known): 8-bit weights"
    return False, f"auto: {hello.machine or 'unknown machine'}: no int16 pair sums to saturate, 8-bit weights"
