"""The lab inventory: ``devices.yaml`` loaded into validated :class:`Device` models.

Where the file is: ``--devices FILE``, else ``$QBENCH_DEVICES``, else ``./devices.yaml``.
A device named ``local`` (the agent on this machine) exists even without a file.
Passwords never live in the file: ``password_env`` names an environment variable.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from qbench.host.errors import UserError

DEFAULT_FILE = "devices.yaml"
ENV_FILE = "QBENCH_DEVICES"
LOCAL = "local"

_SSH_ONLY = {"host", "port", "user", "key", "password_env", "accept_unknown_host", "connect_timeout"}
TAG_PREFIX = "tag:"  # `--device tag:arch=arm64`: any free matching labgrid place

ProviderSpec = Union[str, dict[str, dict[str, Any]]]


class Device(BaseModel):
    """One device of the inventory (an SSH board, or the local agent)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    transport: Literal["ssh", "local"] = "ssh"
    host: Optional[str] = None
    port: int = Field(22, ge=1, le=65535)
    user: Optional[str] = None
    key: Optional[Path] = None
    password_env: Optional[str] = None
    python: Union[str, list[str]] = "python3"
    workdir: str = "~/.qbench"
    runtime: str = "onnxruntime"
    providers: list[ProviderSpec] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: Optional[int] = Field(None, ge=1)
    # TFLite models: xnnpack (LiteRT's default) | none | an external delegate, its library and options
    delegate: Optional[str] = None
    delegate_path: Optional[str] = None
    delegate_options: dict[str, Any] = Field(default_factory=dict)
    # TFLite models: time on LiteRT's CompiledModel with this accelerator instead of the Interpreter
    accelerator: Optional[Literal["cpu", "gpu", "npu"]] = None
    tags: list[str] = Field(default_factory=list)
    accept_unknown_host: bool = False
    connect_timeout: float = Field(10.0, gt=0)
    # Local emulation: pin CPUs, cap memory, label timings that are not the real hardware's.
    cpus: Optional[list[int]] = None
    memory_limit_mb: Optional[int] = Field(None, ge=1)
    emulation: Optional[str] = None
    # The agent's model cache: least recently used models above this are deleted (default: a tenth
    # of the cache's file system, the agent's --cache-max-mb).
    cache_max_mb: Optional[int] = Field(None, ge=1)
    # A board of a labgrid lab: this place's NetworkService gives host, user and port, and qbench
    # locks the place for the run. `select` takes any free place whose tags match instead.
    place: Optional[str] = None
    select: dict[str, str] = Field(default_factory=dict)
    coordinator: Optional[str] = None
    # Not settings of the file: which settings a lab device's own entry gives (the rest came from
    # labgrid.defaults, and a place's tags may replace those), and its place's NetworkService password.
    _own: Optional[frozenset[str]] = PrivateAttr(default=None)
    _service_password: Optional[str] = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_transport(cls, data: Any) -> Any:
        # A device with a host is reached over SSH unless it says otherwise; one without is local.
        if isinstance(data, dict) and "transport" not in data:
            data = {**data, "transport": "ssh" if data.get("host") or data.get("place") or data.get("select")
                    else "local"}
        return data

    @field_validator("key")
    @classmethod
    def _expand_key(cls, value: Optional[Path]) -> Optional[Path]:
        return value.expanduser() if value is not None else None

    @field_validator("providers")
    @classmethod
    def _one_provider_per_mapping(cls, value: list[ProviderSpec]) -> list[ProviderSpec]:
        for spec in value:
            if isinstance(spec, dict) and len(spec) != 1:
                raise ValueError("a name or a mapping {name: {option: value}} per provider")
        return value

    @model_validator(mode="after")
    def _fits_transport(self) -> "Device":
        if self.transport == "ssh" and not (self.host or self.place or self.select):
            raise ValueError("key 'host': required for an ssh device (or set 'place:' of a labgrid lab, "
                             "or 'transport: local')")
        if self.place and self.select:
            raise ValueError("key 'select': a device is one 'place:' or a 'select:' of tags, not both")
        if self.transport == "local":
            misplaced = sorted(_SSH_ONLY & self.model_fields_set)
            if misplaced:
                raise ValueError(f"key {misplaced[0]!r}: only for ssh devices (set 'host')")
        return self

    @property
    def in_lab(self) -> bool:
        """Whether this device is a labgrid place (named, or chosen by tags) rather than a fixed host."""
        return bool(self.place or self.select)

    @property
    def own_settings(self) -> frozenset[str]:
        """The settings this device's own entry gives, as opposed to ``labgrid.defaults``."""
        return self._own if self._own is not None else frozenset(self.model_fields_set)

    def use_service_password(self, password: Optional[str]) -> None:
        """Authenticate with ``password`` (a labgrid NetworkService's) unless this device has its own key or
        ``password_env``. Kept out of every dump of the device, so that no report or log can show it."""
        if password and self.key is None and not self.password_env:
            self._service_password = password

    @property
    def provider_names(self) -> list[str]:
        return [spec if isinstance(spec, str) else next(iter(spec)) for spec in self.providers]

    @property
    def provider_options(self) -> list[dict[str, Any]]:
        """One options dict per provider, aligned with :attr:`provider_names`."""
        return [{} if isinstance(spec, str) else dict(next(iter(spec.values()))) for spec in self.providers]

    def local_python_cmd(self) -> list[str]:
        """The interpreter command of a local device; this one's own Python unless the file names another."""
        if "python" not in self.model_fields_set:
            return [sys.executable]
        return list(self.python) if isinstance(self.python, list) else shlex.split(self.python)

    def remote_python(self) -> str:
        """The interpreter command of an SSH device, as a shell word (or words) for the remote shell."""
        if isinstance(self.python, list):
            return " ".join(shlex.quote(part) for part in self.python)
        return self.python

    def password(self) -> Optional[str]:
        """The password from the environment variable named by ``password_env``, else a labgrid place's
        NetworkService password (:meth:`with_service_password`), if any."""
        if not self.password_env:
            return self._service_password
        value = os.environ.get(self.password_env)
        if value is None:
            raise UserError(
                f"device {self.name!r}: password_env names ${self.password_env}, which is not set in the environment"
            )
        return value


class LabSettings(BaseModel):
    """devices.yaml's ``labgrid:`` section: where the coordinator is and how its places are used.

    ``defaults`` are device settings (key, python, workdir, ...) for a place chosen by tags or
    named by a device that does not set them; ``quarantine_after`` consecutive failed health checks
    quarantine a place.
    """

    model_config = ConfigDict(extra="forbid")

    coordinator: Optional[str] = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    quarantine_after: int = Field(3, ge=1)
    health_check: bool = True


class Inventory:
    """The devices of one file, plus the implicit ``local`` device."""

    def __init__(self, devices: dict[str, Device], source: Optional[Path], lab: Optional[LabSettings] = None):
        self.source = source
        self.lab = lab or LabSettings()
        self.devices = dict(devices)
        self.devices.setdefault(LOCAL, Device(name=LOCAL, transport="local"))

    def names(self) -> list[str]:
        return sorted(self.devices)

    def get(self, name: str) -> Device:
        """The device called ``name`` (or ``tag:k=v,...``: any matching labgrid place); a UserError otherwise."""
        if name.startswith(TAG_PREFIX):
            return self.tag_device(name)
        try:
            return self.devices[name]
        except KeyError:
            where = f"in {self.source}" if self.source else f"(no {DEFAULT_FILE} found; pass --devices FILE)"
            raise UserError(f"unknown device {name!r} {where}; known: {', '.join(self.names())}") from None


    def tag_device(self, name: str) -> Device:
        """A device for ``tag:key=value[,key=value...]``: any free labgrid place with those tags."""
        select = {}
        for pair in filter(None, name[len(TAG_PREFIX):].split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key or not value:
                raise UserError(f"--device {name}: expected tag:KEY=VALUE[,KEY=VALUE...], got {pair!r}")
            select[key.strip()] = value.strip()
        if not select:
            raise UserError(f"--device {name}: name at least one tag, e.g. tag:arch=arm64")
        try:
            return lab_device({"name": name, "select": select}, self.lab)
        except ValidationError as exc:
            raise UserError(f"labgrid.defaults: {_describe(exc.errors()[0])}") from exc


def resolve_path(path: Optional[os.PathLike | str]) -> tuple[Path, bool]:
    """The inventory path and whether the user named it (so that a missing file is an error)."""
    if path:
        return Path(path).expanduser(), True
    if os.environ.get(ENV_FILE):
        return Path(os.environ[ENV_FILE]).expanduser(), True
    return Path(DEFAULT_FILE), False


def load_inventory(path: Optional[os.PathLike | str] = None) -> Inventory:
    """Load and validate the inventory.

    Raises:
        UserError: a named file is missing, or the file is not valid YAML, or a device
            is invalid (the message names the device, the key and what was expected).
    """
    file, named = resolve_path(path)
    if not file.exists():
        if named:
            raise UserError(f"device inventory {file} does not exist")
        return Inventory({}, None)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    lab = parse_lab(data, str(file))
    devices = parse_devices(data, str(file))
    for name, device in devices.items():
        if device.in_lab:
            devices[name] = _with_lab_defaults(device, lab, str(file))
    return Inventory(devices, file, lab)


def parse_lab(data: Any, label: str) -> LabSettings:
    """The ``labgrid:`` section of the parsed YAML document (defaults when absent)."""
    section = data.get("labgrid") if isinstance(data, dict) else None
    if section is None:
        return LabSettings()
    if not isinstance(section, dict):
        raise UserError(f"{label}: 'labgrid' must be a mapping (coordinator: HOST:PORT, defaults: {{...}})")
    try:
        return LabSettings(**{str(k): v for k, v in section.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error.get("loc", ()))
        raise UserError(f"{label}: labgrid, key {key!r}: {error.get('msg')}") from exc


def lab_device(own: dict[str, Any], lab: LabSettings) -> Device:
    """A labgrid device of ``own`` settings, the lab's coordinator and every ``labgrid.defaults`` setting it
    does not set itself; it remembers which settings are its own (a place's tags come between the two).

    Raises:
        ValidationError: a setting of either is invalid.
    """
    device = Device(**{**lab.defaults, **own, "coordinator": own.get("coordinator") or lab.coordinator})
    device._own = frozenset(own)
    return device


def _with_lab_defaults(device: Device, lab: LabSettings, label: str) -> Device:
    try:
        return lab_device(device.model_dump(exclude_unset=True), lab)
    except ValidationError as exc:
        raise UserError(f"{label}: device {device.name!r} with labgrid.defaults, {_describe(exc.errors()[0])}") from exc


def parse_devices(data: Any, label: str) -> dict[str, Device]:
    """Validate the parsed YAML document ``data``; ``label`` prefixes error messages."""
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"devices", "labgrid"}:
        raise UserError(f"{label}: expected a mapping with the keys 'devices' (and 'labgrid')")
    entries = data.get("devices") or {}
    if not isinstance(entries, dict):
        raise UserError(f"{label}: 'devices' must map device names to their settings")
    devices = {}
    for name, settings in entries.items():
        name = str(name)
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise UserError(f"{label}: device {name!r}: expected a mapping of settings, got {settings!r}")
        if "name" in settings:
            raise UserError(f"{label}: device {name!r}, key 'name': not allowed (the device's name is its key)")
        try:
            devices[name] = Device(name=name, **{str(k): v for k, v in settings.items()})
        except ValidationError as exc:
            raise UserError(f"{label}: device {name!r}, {_describe(exc.errors()[0])}") from exc
    return devices


_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "path_type": "a file path",
}

_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _describe(error: dict[str, Any]) -> str:
    """``key 'port': expected an integer, got 'abc'`` from one pydantic error."""
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    # Union members add their type names to the location; the user knows only the key.
    key = loc[0] if loc else ""
    kind = error.get("type", "")
    given = error.get("input")
    if kind == "extra_forbidden":
        return f"key {key!r}: unknown key (known: {', '.join(k for k in Device.model_fields if k != 'name')})"
    if kind == "missing":
        return f"key {key!r}: required"
    if kind == "value_error" and not key:
        return str(error.get("ctx", {}).get("error", error.get("msg")))
    if key == "providers" and kind in ("string_type", "dict_type"):
        expected = "a provider name or a mapping {name: {option: value}}"
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind in _BOUNDS:
        bound = next(iter(error.get("ctx", {}).values()), "")
        expected = f"a number {_BOUNDS[kind]} {bound}"
    elif kind == "literal_error":
        expected = f"one of {error.get('ctx', {}).get('expected', '')}"
    else:
        expected = error.get("msg", "a valid value")
        expected = expected[len("Value error, "):] if expected.startswith("Value error, ") else expected
        expected = expected[:1].lower() + expected[1:]
    return f"key {key!r}: expected {expected}, got {given!r}" if key else expected
