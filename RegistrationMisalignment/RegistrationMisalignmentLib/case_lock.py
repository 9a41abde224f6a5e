"""A lock file per case, so that concurrent batch runs and cluster workers never write the same case at once."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0  # a lock not refreshed for this long is abandoned (its holder is gone)
STAGED_SUFFIX = ".staged"  # a lock file being written, before it is linked into place


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CaseLock:
    """An exclusive lock file, refreshed while held; abandoned locks (dead holder, or silent too long) are broken."""

    def __init__(self, path):
        self.path = Path(path)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat = None

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
        staged.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}))
        try:
            os.link(staged, self.path)
        finally:
            staged.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop refreshing and remove the lock if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._holder().get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def _refresh(self) -> None:
        """Touch the lock file regularly so other machines can tell it is alive."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _holder(self) -> dict:
        """The lock file's content (empty if missing or unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def abandoned(self) -> bool:
        """True when the lock has not been refreshed lately, or its holder's process is gone (same machine). A live
        process with the holder's id is not enough to keep it: after a reboot the id may be another program's."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > STALE_AFTER_S:
            return True
        holder = self._holder()
        return (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
                and not _process_alive(holder["pid"]))

    def _break(self) -> None:
        """Remove an abandoned lock (renamed first, so that only one breaker removes it)."""
        victim = self.path.with_name(f"{self.path.name}.broken-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, victim)
        except FileNotFoundError:
            return
        victim.unlink(missing_ok=True)
