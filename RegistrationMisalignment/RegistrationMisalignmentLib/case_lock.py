"""A lock file per case, so that concurrent batch runs and cluster workers never write the same case at once."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0  # a lock not refreshed for this long is abandoned (its holder is gone)
STAGED_SUFFIX = ".staged"  # a lock file being written, before it is linked into place


def _process_status(pid: int):
    """The fields of process `pid`'s status after its command name, its state first (Linux); None where the system
    does not tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int):
    """This machine's boot and the start time of process `pid` (Linux): a live holder's, unlike a process that took
    its id later, matches what the lock recorded; None where the system does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = _process_status(pid)
    return f"{boot}:{fields[19]}" if fields else None  # the 22nd field of stat, counted from the state


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine: not a zombie, ended but not yet reaped (as the workers of
    a killed run are for a moment; told on Linux)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _process_status(pid)
    return not fields or fields[0] != "Z"


class CaseLock:
    """An exclusive lock file, refreshed while held; abandoned locks (dead holder, or silent too long) are broken."""

    def __init__(self, path):
        """A lock at `path`, not taken yet."""
        self.path = Path(path)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat = None
        self._linked = False  # the lock file is ours: set the moment it is made, so an interrupt cannot orphan it

    @contextmanager
    def held(self):
        """Yield whether the lock was taken (False: a live holder has it); released on leaving if taken, also when
        Ctrl-C or SIGTERM lands while it is being taken."""
        try:
            yield self.acquire()
        finally:
            if self._linked:
                self.release()

    def acquire(self) -> bool:
        """Take the lock; False when a live holder has it."""
        for _ in range(3):
            try:
                self._create()
            except FileExistsError:
                if not self.abandoned():
                    return False
                self._break()
                continue
            except FileNotFoundError:  # the holder removed our staged file as a leftover: it is alive
                return False
            self._heartbeat = threading.Thread(target=self._refresh, daemon=True)
            self._heartbeat.start()
            return True
        return False

    def _create(self) -> None:
        """Create the lock file with its holder already written (FileExistsError if it exists): a file staged beside
        it is hard-linked into place, so a holder killed at any moment never leaves an empty lock that others could
        not tell from a live one."""
        staged = self.path.with_name(f"{self.path.name}.{self.token}{STAGED_SUFFIX}")
        staged.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "process": process_identity(os.getpid()), "token": self.token}))
        try:
            os.link(staged, self.path)
            self._linked = True
        finally:
            staged.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop refreshing and remove the lock if it is still ours."""
        self._stop.set()
        try:
            if self._heartbeat is not None:
                self._heartbeat.join()
        finally:
            if self._holder().get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self._linked = False

    def _refresh(self) -> None:
        """Touch the lock file regularly so other machines can tell it is alive (a failed touch, e.g. a passing
        network file system error, is tried again at the next beat)."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                continue

    def _holder(self) -> dict:
        """The lock file's content (empty if missing or unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def abandoned(self) -> bool:
        """True when the lock's holder is gone. On this machine: its process has died, or its id now belongs to
        another process (after a reboot, say; told by `process_identity`), while the holder itself keeps the lock
        however long it is silent (suspended, say). Elsewhere, or where the system cannot tell: the lock has not been
        refreshed for STALE_AFTER_S."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        holder = self._holder()
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _process_alive(holder["pid"]):
                return True
            now = process_identity(holder["pid"])
            if holder.get("process") is not None and now is not None:
                return now != holder["process"]
        return age > STALE_AFTER_S

    def _break(self) -> None:
        """Remove an abandoned lock (renamed first, so that only one breaker removes it)."""
        victim = self.path.with_name(f"{self.path.name}.broken-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, victim)
        except FileNotFoundError:
            return
        victim.unlink(missing_ok=True)
