"""A Ray cluster address (`--address`, `search.address`) checked before any work: its form, and that
something answers there (Ray itself retries an address nobody answers for minutes)."""

from __future__ import annotations

import re
import socket

from mpsearch.errors import ConfigError, MpsearchError

# Ray Client's default port, when a ray:// address names none.
CLIENT_PORT = 10001
_FORMS = "host:port (the head's GCS port, 6379 unless `ray start --port` said otherwise), ray://host:10001, or auto"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[^:]*))?$")


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a host:port or ray://host[:port] address; None for "auto" and "local", which Ray
    resolves itself. A malformed address is a ConfigError naming the forms Ray takes."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    client = text.startswith("ray://")
    match = _HOST_PORT.match(text.removeprefix("ray://"))
    port = match and match["port"]
    if match is None or (port is None and not client) or (port is not None and not _valid_port(port)):
        raise ConfigError(f"--address '{address}' is not a Ray cluster address; use {_FORMS}.")
    return match["host"].strip("[]"), int(port) if port is not None else CLIENT_PORT


def _valid_port(port: str) -> bool:
    return port.isdigit() and 0 < int(port) < 65536


def check_address(address: str, timeout: float = 10.0) -> None:
    """Raise a one-line error for a malformed address or one where nothing answers."""
    where = split_address(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as exc:
        raise MpsearchError(f"Ray is not reachable at --address '{address}' ({exc.strerror or exc}); start the "
                            "cluster (`ray start --head`) or fix the address (host:6379, or ray://host:10001).") from None
