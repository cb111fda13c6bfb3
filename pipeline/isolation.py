"""Local Ray reachable from this host only: the launch moves into a private network namespace.

Ray 2.60's gcs_server, raylet and workers bind every interface (0.0.0.0), and no option narrows that. A
process that unshares its network namespace sees only a loopback interface, so those binds cannot be reached
from any other host, and the host's own namespace shows no Ray ports at all. The launch process unshares
itself in place (no re-exec: same pid, signals, stdout/stderr and exit code), before it starts any thread
(a multi-threaded process cannot enter a new user namespace, and a namespace change is per thread), then
brings ``lo`` up with one ioctl. Ray, started afterwards, inherits the namespace and picks 127.0.0.1 as the
node address. As root only the network namespace is new; otherwise a user namespace that maps the user to
itself comes with it (what ``unshare --net --map-current-user`` does), so files keep their owner.

It applies to a launch with a local Ray and local stores only: a tracking server (even on 127.0.0.1) or a
remote ``--storage`` would be out of reach inside the namespace, so there the launch says so in one line and
keeps the host network. Where the namespace cannot be made (no user namespaces, a seccomp filter, a threaded
caller), one line says Ray will listen on all interfaces and why, and the launch goes on.
``WMHP_RAY_NETNS=0`` turns it off.

A namespace belongs to the whole process, so only a process started as a launch takes it: the ``wmhp`` entry
point calls ``own_process()`` for ``ablate`` and ``reproduce``. A library caller of ``run_grids`` (a notebook,
the test process) keeps its network.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys
from typing import TextIO

OPT_OUT_ENV = "WMHP_RAY_NETNS"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_LOCAL_SCHEMES = ("", "sqlite", "file")  # "": a plain path
_ELSEWHERE = "--address: Ray runs elsewhere"  # not this launch's Ray: nothing to say
_owned = False


def own_process() -> None:
    """This process is a launch started from the command line: it may change its own network namespace."""
    global _owned
    _owned = True


def why_not_isolated(address: str | None, tracking_uri: str | None, storage: str | None) -> str | None:
    """Why this launch keeps the host network (None: it can run in a private namespace)."""
    if address not in (None, "local"):
        return _ELSEWHERE
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "no", "off", "false"):
        return f"{OPT_OUT_ENV}=0"
    uri = tracking_uri or ""
    scheme = uri.split(":", 1)[0] if ":" in uri or uri.startswith("databricks") else ""
    if scheme not in _LOCAL_SCHEMES:  # a server, a database server, databricks, ...
        return f"--tracking-uri {uri[:200]} is not a local file, out of reach from a private network namespace"
    if storage and "://" in storage and storage.split(":", 1)[0] != "file":
        return f"--storage {storage[:200]} is remote, out of reach from a private network namespace"
    return None


def isolate_local_ray(address: str | None, tracking_uri: str | None, storage: str | None,
                      err: TextIO | None = None) -> bool:
    """Move this process into a private network namespace when the launch allows it; True when it did.

    Call it before the process starts threads. Never raises: a launch that cannot be isolated runs as
    before, after one line on ``err`` (stderr) saying why.
    """
    if not _owned:
        return False
    err = err or sys.stderr
    reason = why_not_isolated(address, tracking_uri, storage)
    if reason is None:
        try:
            enter_private_network()
            return True
        except OSError as exc:
            reason = f"no private network namespace ({exc.strerror or exc})"
    if reason != _ELSEWHERE:
        print(f"wmhp: note: local Ray will listen on all network interfaces: {reason}", file=err, flush=True)
    return False


def enter_private_network(user_namespace: bool | None = None) -> None:
    """unshare(2) a new network namespace and bring ``lo`` up. ``user_namespace``: None (unless root, or when
    root may not unshare alone, as in a container without CAP_SYS_ADMIN), True or False: a user namespace too."""
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads > 1:  # the namespace would hold this thread only, not the threads already running
        raise OSError(errno.EINVAL, f"the process already runs {threads} threads")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):
        raise OSError(errno.ENOSYS, "unshare(2) is not available")
    uid, gid = os.geteuid(), os.getegid()
    if user_namespace is False or (user_namespace is None and uid == 0):
        if libc.unshare(_CLONE_NEWNET) == 0:
            return _bring_loopback_up()
        if user_namespace is False:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _bring_loopback_up()


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except FileNotFoundError:  # setgroups is missing on kernels before 3.19, which need no deny
        pass


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
