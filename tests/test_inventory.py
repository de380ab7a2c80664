"""devices.yaml: where it is found, what it accepts, and how a bad entry is reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qbench.host.errors import UserError
from qbench.host.inventory import load_inventory

GOOD = """
devices:
  pi4:
    host: 192.0.2.42
    user: pi
    key: ~/.ssh/id_ed25519
    threads: 4
    tags: [arm64, lab-a]
    providers:
      - CPUExecutionProvider
      - XnnpackExecutionProvider: {intra_op_num_threads: 2}
  emu:
    python: [qemu-aarch64-static, -L, /srv/root, /srv/root/usr/bin/python3]
    cpus: [0, 1]
    memory_limit_mb: 512
    emulation: qemu-aarch64 cortex-a72
"""


def _write(tmp_path: Path, text: str, name: str = "devices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_is_loaded_with_defaults_and_expansions(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    inventory = load_inventory(_write(tmp_path, GOOD))
    pi4 = inventory.get("pi4")
    assert (pi4.transport, pi4.port, pi4.python) == ("ssh", 22, "python3")
    assert (pi4.workdir, pi4.runtime) == ("~/.qbench", "onnxruntime")
    assert pi4.key == tmp_path / ".ssh" / "id_ed25519"
    assert pi4.provider_names == ["CPUExecutionProvider", "XnnpackExecutionProvider"]
    assert pi4.provider_options == [{}, {"intra_op_num_threads": 2}]
    emu = inventory.get("emu")
    assert emu.transport == "local"
    assert emu.local_python_cmd() == ["qemu-aarch64-static", "-L", "/srv/root", "/srv/root/usr/bin/python3"]
    assert inventory.names() == ["emu", "local", "pi4"]


def test_local_exists_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QBENCH_DEVICES", raising=False)
    local = load_inventory().get("local")
    assert local.transport == "local"
    assert local.local_python_cmd() == [sys.executable]


def test_environment_variable_points_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QBENCH_DEVICES", str(_write(tmp_path, GOOD, "lab.yaml")))
    assert "pi4" in load_inventory().names()


def test_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_inventory(tmp_path / "nope.yaml")


def test_unknown_device_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown device 'pi5' in .*devices.yaml; known: emu, local, pi4"):
        load_inventory(_write(tmp_path, GOOD)).get("pi5")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("host: h\n    port: abc", "device 'pi4', key 'port': expected an integer, got 'abc'"),
        ("host: h\n    port: 70000", "device 'pi4', key 'port': expected a number <= 65535, got 70000"),
        ("host: h\n    prot: 22", "device 'pi4', key 'prot': unknown key (known: transport, host, port"),
        ("host: h\n    transport: telnet", "device 'pi4', key 'transport': expected one of 'ssh' or 'local'"),
        ("host: h\n    threads: 0", "device 'pi4', key 'threads': expected a number >= 1, got 0"),
        ("host: h\n    accept_unknown_host: perhaps", "key 'accept_unknown_host': expected true or false"),
        ("host: h\n    providers: CPUExecutionProvider", "key 'providers': expected a list"),
        ("host: h\n    providers: [{A: {}, B: {}}]", "key 'providers': expected a name or a mapping"),
        ("transport: ssh", "device 'pi4', key 'host': required for an ssh device"),
        ("port: 2222", "device 'pi4', key 'port': only for ssh devices"),
        ("host: h\n    password: hunter2", "device 'pi4', key 'password': unknown key"),
    ],
)
def test_bad_entry_names_device_key_and_expectation(tmp_path, monkeypatch, entry, message):
    _write(tmp_path, f"devices:\n  pi4:\n    {entry}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QBENCH_DEVICES", raising=False)
    with pytest.raises(UserError) as caught:
        load_inventory()
    assert str(caught.value).startswith("devices.yaml: ")
    assert message in str(caught.value)


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"devices.yaml: not valid YAML at line 3"):
        load_inventory(_write(tmp_path, "devices:\n  pi4:\n\thost: h\n"))


def test_top_level_must_be_the_devices_mapping(tmp_path):
    with pytest.raises(UserError, match=r"expected a mapping with the keys 'devices' \(and 'labgrid'\)"):
        load_inventory(_write(tmp_path, "pi4:\n  host: h\n"))


def test_password_comes_from_the_named_environment_variable(tmp_path, monkeypatch):
    path = _write(tmp_path, "devices:\n  pi4:\n    host: h\n    password_env: PI4_PASSWORD\n")
    device = load_inventory(path).get("pi4")
    monkeypatch.delenv("PI4_PASSWORD", raising=False)
    with pytest.raises(UserError, match=r"\$PI4_PASSWORD, which is not set"):
        device.password()
    monkeypatch.setenv("PI4_PASSWORD", "from-env")
    assert device.password() == "from-env"
