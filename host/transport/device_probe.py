"""Runs ON THE DEVICE (its source is sent to the device's Python): reports what the agent needs.

Standard library only, no qbench import: it runs before anything is deployed.
Usage: ``python - '{"workdir": "~/.qbench", "modules": ["numpy", "zmq", "onnxruntime"]}'``
with this file on stdin; prints one JSON object on stdout.
"""

import glob
import json
import os
import platform
import shutil
import sys


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, ValueError):
        return None


def _module(name):
    try:
        module = __import__(name)
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything; report it
        return {"version": None, "error": f"{type(exc).__name__}: {exc}"}
    info = {"version": getattr(module, "__version__", None), "error": None}
    if name == "onnxruntime":
        info["providers"] = list(module.get_available_providers())
    return info


def _os_name():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _mem_available():
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cpu_temp_c():
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*"))
    # Boards name their SoC zone "cpu-thermal", "soc_thermal", "x86_pkg_temp"...; prefer those.
    zones.sort(key=lambda z: not any(k in (_read(z + "/type") or "") for k in ("cpu", "soc", "pkg")))
    for zone in zones:
        raw = _read(zone + "/temp")
        if raw and raw.lstrip("-").isdigit():
            return int(raw) / 1000.0
    return None


def _disk_free(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path or "/").free


def main():
    args = json.loads(sys.argv[1])
    workdir = os.path.abspath(os.path.expanduser(args["workdir"]))
    report = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "system": platform.system(),
        "os": _os_name(),
        "cpu_count": os.cpu_count(),
        "workdir": workdir,
        "disk_free_bytes": _disk_free(workdir),
        "mem_available_bytes": _mem_available(),
        "cpu_temp_c": _cpu_temp_c(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "bundles": {
            os.path.basename(p): os.path.getsize(p) for p in glob.glob(os.path.join(workdir, "qbench-agent-*.pyz"))
        },
        "modules": {name: _module(name) for name in args["modules"]},
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
