"""Ports are exclusive: a second server on a port in use fails to start with a clear error.

uvicorn's HTTP socket is already exclusive; gRPC sets SO_REUSEPORT by default, so two servers
could share its port and split the calls between them. ``--workers N`` still share each port
among their own workers (one inherited socket for HTTP, SO_REUSEPORT for gRPC and probes), but
only once this check has found the ports free.
"""

from __future__ import annotations

import errno
import socket

from ferry.errors import PortInUse as PortInUse  # re-exported: raised here
from ferry.settings import Settings


def check_ports(settings: Settings) -> None:
    """Raise ``PortInUse`` naming the option, for the first port another process holds or two options share."""
    ports = {"--port": settings.port, "--grpc-port": settings.grpc_port, "--probe-port": settings.probe_port}
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if not port:
            continue
        if port in seen:
            raise PortInUse(f"{option} {port} is also {seen[port]}: each port serves one thing")
        seen[port] = option
        _check_free(settings.host, port, option)


def bind_listener(host: str, port: int, shared: bool, backlog: int = 128) -> socket.socket:
    """A listening socket on ``host``'s port, bound here, in Python, as uvicorn binds the HTTP port (a ':' in
    the host: IPv6); ``shared`` (``--workers N``) lets this server's workers bind it each (SO_REUSEPORT).

    asyncio's ``create_server(host, port)`` resolves the host on uvloop's resolver, which starts libuv's pool
    of four threads in every worker that binds (1.1 MiB of private memory each) for a name already known.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _check_free(host: str, port: int, option: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "in use"
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"{option} {port} on {host} is in use by another process") from None
            raise PortInUse(f"{option} {port} on {host} cannot be bound: {exc.strerror}") from None
