"""systemd's notify protocol (sd_notify) over $NOTIFY_SOCKET, without a library or a subprocess.

`reconciler.service` is `Type=notify` with `WatchdogSec=`: the daemon says READY=1 once its first
cycle finished (or failed cleanly) and WATCHDOG=1 from its loop, so a hung daemon is restarted.
Outside systemd (no NOTIFY_SOCKET) every call does nothing. Must not raise: a lost notification is
no reason to stop reconciling.
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["notify", "watchdog_interval"]


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "WATCHDOG=1", "STOPPING=1"); True when it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.5)
    except ValueError:
        return None
