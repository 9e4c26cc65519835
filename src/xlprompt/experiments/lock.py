"""One lock file per run, so two sweeps on one store (or a rerun racing a dying one) never run it twice.

The lock is written whole into a private file and hard-linked into place (link fails when the lock exists,
as O_CREAT|O_EXCL does, atomically on local filesystems and NFS; where links are unsupported, O_EXCL), so
it is never seen empty, and holds `{host, pid, start, time}`. A holder keeps touching it (heartbeat). It is stale when its process is gone:
on the same host we ask the kernel (pid dead, zombie, or a reused pid with another start time); from
another host we cannot, so a lock whose heartbeat is older than `stale_after` seconds counts as stale.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}  # link() unsupported here
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks since boot (Linux); tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child nobody has reaped yet still answers kill(0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except OSError:
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


class RunLock:
    def __init__(self, path: str | Path, stale_after: float = STALE_AFTER_SECONDS):
        self.path = Path(path)
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
                "time": time.time()}

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written this instant, or garbage: judged by its age below

    def is_stale(self) -> bool:
        info = self.holder()
        if info is None:
            return False
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return not _alive(info["pid"], info.get("start"))
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self.stale_after

    def acquire(self) -> bool:
        """Take the lock, breaking a stale one; False when a live process holds it."""
        for _ in range(3):
            # the owner is written into a private file first and linked into place (link fails if the
            # lock exists, like O_EXCL), so no reader ever sees an empty or half-written lock
            staged = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
            staged.write_text(json.dumps(self._owner()))
            try:
                try:
                    os.link(staged, self.path)
                except OSError as exc:
                    if isinstance(exc, FileExistsError) or exc.errno not in _NO_LINKS:
                        raise
                    self._create_exclusive()  # a filesystem without hard links: O_EXCL, then the owner
            except FileExistsError:
                if not self._break_stale():
                    return False
                continue
            finally:
                staged.unlink(missing_ok=True)
            self._start_heartbeat()
            return True
        return False

    def _create_exclusive(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._owner(), fh)

    def _break_stale(self) -> bool:
        """Move a stale lock aside and delete it. Renaming first means that of two processes breaking the
        same stale lock only one succeeds; the inode check catches the case where the lock was replaced
        by a live one between our look and our rename, and puts that one back."""
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return True
        if not self.is_stale():
            return False
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        if aside.stat().st_ino != inode:
            try:
                os.link(aside, self.path)  # fails if yet another process created one meanwhile
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        info = self.holder()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
