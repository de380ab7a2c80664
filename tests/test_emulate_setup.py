"""`qbench emulate` without building a board: devices.yaml edits, wheel pins, and its errors."""

from __future__ import annotations

import yaml
import pytest

from cli import qbench
from qbench.host.emulate import BoardSpec, default_wheels, wheels_with
from qbench.host.errors import UserError
from qbench.host.inventory import load_inventory
from qbench.host.inventory_edit import add_device

ENTRY = {"transport": "local", "python": "/srv/board/bin/python3", "emulation": "qemu-aarch64 cortex-a72",
         "tags": ["arm64", "emulated"]}

COMMENTED = """# my lab
devices:
  local:
    transport: local   # keep me
  pi4-emu:
    transport: local
    python: /old/bin/python3
  # pi5:
  #   host: 192.0.2.7
  small:
    transport: local
    threads: 1
"""


def test_new_file_gets_a_valid_entry(tmp_path):
    path = tmp_path / "devices.yaml"
    assert add_device(path, "pi4-emu", ENTRY) is False
    device = load_inventory(path).get("pi4-emu")
    assert device.local_python_cmd() == ["/srv/board/bin/python3"] and device.emulation == ENTRY["emulation"]
    assert "tags: [arm64, emulated]" in path.read_text()


def test_replacing_an_entry_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(COMMENTED)
    assert add_device(path, "pi4-emu", ENTRY) is True
    text = path.read_text()
    assert "# my lab" in text and "# keep me" in text and "  # pi5:\n  #   host: 192.0.2.7\n" in text
    assert "/old/bin" not in text
    devices = yaml.safe_load(text)["devices"]
    assert devices["pi4-emu"] == ENTRY and devices["small"] == {"transport": "local", "threads": 1}
    assert list(devices) == ["local", "pi4-emu", "small"]


def test_adding_appends_and_is_idempotent(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(COMMENTED)
    add_device(path, "emu2", ENTRY)
    once = path.read_text()
    add_device(path, "emu2", ENTRY)
    assert path.read_text() == once and once.startswith(COMMENTED)
    assert yaml.safe_load(once)["devices"]["emu2"] == ENTRY


def test_flow_style_file_is_rewritten_from_its_data(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices: {local: {transport: local, threads: 2}}\n")
    add_device(path, "pi4-emu", ENTRY)
    assert yaml.safe_load(path.read_text())["devices"] == {"local": {"transport": "local", "threads": 2},
                                                           "pi4-emu": ENTRY}


def test_invalid_inventory_is_not_touched(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  pi4:\n    port: abc\n")
    with pytest.raises(UserError, match="device 'pi4', key 'port'"):
        add_device(path, "pi4-emu", ENTRY)
    assert path.read_text() == "devices:\n  pi4:\n    port: abc\n"


def test_wheels_follow_this_machine_and_overrides_replace_by_package():
    pins = dict(req.split("==") for req in default_wheels())
    assert set(pins) == {"numpy", "pyzmq", "onnxruntime", "ai-edge-litert"}
    wheels = wheels_with(["onnxruntime==1.19.2", "ml_dtypes"])
    assert "onnxruntime==1.19.2" in wheels and f"onnxruntime=={pins['onnxruntime']}" not in wheels
    assert wheels[-1] == "ml_dtypes" and len(wheels) == 5
    assert BoardSpec(wheels).key() != BoardSpec(default_wheels()).key()


def test_missing_qemu_is_one_clear_error(tmp_path):
    # A PATH without qemu: the real CLI names the Debian package and writes nothing.
    proc = qbench("emulate", "arm64", "--root", str(tmp_path / "board"), "--devices", str(tmp_path / "d.yaml"),
                  cwd=tmp_path, env={"PATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "apt-get install qemu-user-static" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d.yaml").exists() and not (tmp_path / "board").exists()


def test_unknown_runtime_is_refused(tmp_path):
    proc = qbench("emulate", "arm64", "--runtime", "tensorrt", cwd=tmp_path)
    assert proc.returncode == 1 and "--runtime must be one of" in proc.stderr
