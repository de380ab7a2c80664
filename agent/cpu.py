"""The CPU features int8 kernels depend on, as the board's kernel lists them in /proc/cpuinfo.

ONNX Runtime's x86 u8s8 kernels take the VNNI instructions where the CPU has them; with AVX2
alone they multiply-add pairs with VPMADDUBSW, whose int16 sums saturate (the host turns that into
a note). On ARM, the dot-product (``asimddp``) and matrix-multiply (``i8mm``) extensions decide
which int8 kernels run.
"""

from __future__ import annotations

#: per ``platform.machine()``: the /proc/cpuinfo line that lists features, and the ones reported
_FEATURES = {
    "x86_64": ("flags", ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")),
    "aarch64": ("Features", ("asimd", "asimddp", "i8mm", "sve", "sve2")),
}


def int8_features(machine: str, cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The int8-relevant features of this CPU, empty where the file or the architecture is unknown.

    Only the line of the machine's own architecture counts: under qemu-user an emulated aarch64
    process reads the x86 host's file, whose ``flags`` say nothing about the emulated CPU.
    """
    key, known = _FEATURES.get(machine, ("", ()))
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    present = set(value.split())
                    return [f for f in known if f in present]
    except OSError:
        pass
    return []
