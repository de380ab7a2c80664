"""The transport for an inventory device: SSH for a board, a local process otherwise."""

from __future__ import annotations

from qbench.host.inventory import Device

from .base import AgentTransport


def transport_for(device: Device, accept_new_host: bool = False, lab=None) -> AgentTransport:
    """A not-yet-started transport for ``device``.

    Args:
        device: from the inventory.
        accept_new_host: trust an unknown SSH host key (``--accept-new-host``).
        lab: :class:`qbench.host.lab.transport.LabOptions` for a labgrid place (default ones if None).
    """
    if device.in_lab:
        from qbench.host.lab.options import LabOptions
        from qbench.host.lab.transport import LabTransport

        return LabTransport(device, lab or LabOptions(), accept_new_host=accept_new_host)
    if device.transport == "local":
        from .local import LocalTransport

        return LocalTransport(
            python_cmd=device.local_python_cmd(),
            threads=device.threads,
            cpus=device.cpus,
            memory_limit_mb=device.memory_limit_mb,
            label=device.name,
            cache_max_mb=device.cache_max_mb,
        )
    from .ssh import SSHTransport

    return SSHTransport(device, accept_new_host=accept_new_host)
