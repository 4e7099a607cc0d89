"""Taking the server's address before anything is loaded.

`reserve(host, port)` binds and listens on the server's socket itself, at once: a busy port, a port that
needs root or a host that is not this machine's fails in one line before anything is loaded, and uvicorn
then serves on this very socket, so no other program can take the port in between (a client that
connects meanwhile waits in the backlog). `bind_error` is the
one-line message for an OSError of binding or listening (also when uvicorn's own listen fails).
"""

from __future__ import annotations

import errno
import socket

from nanochat.common.errors import NanochatError, UsageError

BACKLOG = 2048  # uvicorn's default


def bind_error(host: str, port: int, err: OSError) -> str:
    """What went wrong binding host:port, and how to fix it, in one line."""
    if err.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; pass --port N or stop the other server"
    if err.errno == errno.EACCES:
        return f"no permission to bind port {port} on {host} (ports below 1024 need root); pass --port N with N of 1024 or more"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; pass --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
    return f"cannot bind {host}:{port} ({err.strerror or err}); pass another --host or --port"


def reserve(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or the one-line error saying why there is none."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host} is not an address or a name this machine resolves ({e.strerror}); pass e.g. --host 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    try:
        # as uvicorn does: a server stopped a moment ago (its connections in TIME_WAIT) does not block the port,
        # while one still listening does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise NanochatError(bind_error(host, port, e)) from None
    return sock
