"""devices.yaml's labgrid section, place-backed devices and `--device tag:...`."""

from __future__ import annotations

import pytest

from qbench.host.errors import UserError
from qbench.host.inventory import Device, load_inventory
from qbench.host.lab.lease import own_token, token_alive
from qbench.host.lab.place_settings import tag_settings


def _write(tmp_path, text: str):
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


LAB = """labgrid:
  coordinator: lab:20408
  quarantine_after: 2
  defaults: {key: ~/.ssh/lab, python: python3.11, workdir: /tmp/q}
devices:
  pi4a: {place: pi4a, threads: 4}
  mine: {place: p2, python: /opt/py/bin/python3, coordinator: other:1}
"""


def test_place_devices_take_the_labgrid_defaults_and_keep_their_own(tmp_path):
    inventory = load_inventory(_write(tmp_path, LAB))
    pi4a, mine = inventory.get("pi4a"), inventory.get("mine")
    assert pi4a.transport == "ssh" and pi4a.host is None and pi4a.in_lab
    assert pi4a.coordinator == "lab:20408" and pi4a.python == "python3.11" and pi4a.threads == 4
    assert str(pi4a.key).endswith("/.ssh/lab") and pi4a.workdir == "/tmp/q"
    assert mine.python == "/opt/py/bin/python3" and mine.coordinator == "other:1"
    assert inventory.lab.quarantine_after == 2


def test_tag_device_selects_by_tags_with_the_defaults(tmp_path):
    device = load_inventory(_write(tmp_path, LAB)).get("tag:arch=arm64,soc=bcm2711")
    assert device.select == {"arch": "arm64", "soc": "bcm2711"} and device.place is None
    assert device.coordinator == "lab:20408" and device.python == "python3.11" and device.in_lab


@pytest.mark.parametrize("name, message", [
    ("tag:", "name at least one tag"),
    ("tag:arch", r"expected tag:KEY=VALUE\[,KEY=VALUE...\], got 'arch'"),
])
def test_bad_tag_selections_are_one_line(tmp_path, name, message):
    with pytest.raises(UserError, match=message):
        load_inventory(_write(tmp_path, LAB)).get(name)


def test_bad_labgrid_section_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"labgrid, key 'quarantine_after'"):
        load_inventory(_write(tmp_path, "labgrid: {quarantine_after: 0}\ndevices: {}\n"))
    with pytest.raises(UserError, match=r"labgrid, key 'coordinatr'"):
        load_inventory(_write(tmp_path, "labgrid: {coordinatr: x}\n"))


def test_a_device_is_a_place_or_a_selection_not_both(tmp_path):
    with pytest.raises(UserError, match="one 'place:' or a 'select:'"):
        load_inventory(_write(tmp_path, "devices:\n  x: {place: a, select: {arch: arm64}}\n"))


def test_lease_tokens_tell_a_live_process_from_a_gone_one():
    assert token_alive(own_token())
    pid, started = own_token().split("-")
    assert not token_alive(f"{pid}-{int(started) + 1}")  # same pid, another process start: reused
    assert not token_alive("999999999-1") and not token_alive("garbage")


def test_a_lab_device_knows_which_settings_are_its_own(tmp_path):
    inventory = load_inventory(_write(tmp_path, LAB))
    assert {"python", "coordinator"} <= inventory.get("mine").own_settings
    assert "python" not in inventory.get("pi4a").own_settings and "threads" in inventory.get("pi4a").own_settings
    assert "python" not in inventory.get("tag:arch=arm64").own_settings


def test_only_a_boards_own_software_settings_come_from_tags():
    tags = {"qbench-python": "/usr/bin/python3.11", "qbench-workdir": "/data/q", "qbench-runtime": "tflite",
            "qbench-connect-timeout": "30", "qbench-key": "/etc/ssh/ssh_host_ed25519_key",
            "qbench-password_env": "AWS_SECRET_ACCESS_KEY", "qbench-transport": "local", "arch": "arm64"}
    assert tag_settings(tags) == {"python": "/usr/bin/python3.11", "workdir": "/data/q", "runtime": "tflite",
                                  "connect_timeout": "30"}


def test_a_service_password_is_used_only_without_a_key_and_never_dumped(tmp_path, monkeypatch):
    inventory = load_inventory(_write(tmp_path, LAB))
    keyed = inventory.get("pi4a")
    keyed.use_service_password("pw-1")
    assert keyed.password() is None
    bare = Device(name="b", host="h")
    bare.use_service_password("pw-1")
    assert bare.password() == "pw-1"
    assert "pw-1" not in repr(bare) and "pw-1" not in bare.model_dump_json()
    monkeypatch.setenv("MY_PW", "pw-2")
    own = Device(name="c", host="h", password_env="MY_PW")
    own.use_service_password("pw-1")
    assert own.password() == "pw-2"
