"""Output that is never half-written and survives interruption.

A run writes to ``OUT.partial`` (and ``OUT.rejected.jsonl.partial``) and, after every batch,
flushes and fsyncs them and then atomically replaces ``OUT.progress.json``, which records how many
bytes of each partial file are complete, the input position to continue from, and a fingerprint
of the input and options. The checkpoint is only ever written *after* the data it describes is on
disk, so on resume anything past the recorded sizes (a batch cut off by SIGKILL) is truncated
away and the input is re-read from the recorded position: no row is lost, rescored or duplicated.
Only a finished run renames the partial files to their final names; ``OUT.meta.json`` then
records the fingerprint, so rerunning a finished command is a no-op instead of a rescoring. The
checkpoint is marked ``complete`` before the first rename, so a run killed between the renames is
completed by the next run (the renames are redone), whatever command that is.

The protocol assumes one writer per output. :func:`output_lock` enforces it: two runs on the same
``OUT`` would both append to ``OUT.partial`` and overwrite each other's checkpoint (duplicated rows,
and a "complete" output that is not), so the second one is refused while the first holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from reward_server.errors import UsageError

PROGRESS_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # mkstemp creates 0600; outputs get the mode a plain open() would give


class ResumeRefused(UsageError):
    """The partial run on disk was made from a different input or with different options."""


class OutputExists(UsageError):
    """``OUT`` is already a finished run of something else; ``--overwrite`` replaces it."""


class OutputBusy(UsageError):
    """Another live process is writing the same ``OUT`` (it holds ``OUT.lock``)."""


class OutputUnusable(UsageError):
    """``OUT`` cannot be written where it is asked for (its directory cannot be made, read-only)."""


def sidecar(out: Path, suffix: str) -> Path:
    """``scored.jsonl`` + ``.meta.json`` -> ``scored.jsonl.meta.json`` (names stay greppable)."""
    return out.with_name(out.name + suffix)


def fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: not every filesystem allows opening a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` only if the block finishes without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


LOCK_READ_TRIES = 50  # x 10 ms: how long a refused run waits for the holder to have written its name


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as written there by :func:`output_lock`. The holder writes its
    name just after taking the lock, so a run refused in between retries briefly before giving up."""
    for _ in range(LOCK_READ_TRIES):
        try:
            info = json.loads(path.read_text())
            return f"pid {info['pid']} on {info['host']}, reward-server {info['command']} started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "pid unknown"


@contextmanager
def output_lock(out: Path, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``OUT.lock`` for the block, or raise :class:`OutputBusy` at once.

    ``flock`` is tied to the open file, so the kernel releases it when the process dies, however
    (SIGKILL included): a stale ``OUT.lock`` left by a killed run is simply taken over, and the
    resume works. The file records the holder (pid, host, start time, command) for the refusal
    message, and is removed on release *while still locked*; a run that opened the old file just
    before the removal notices, after its own ``flock``, that the path now names another file (or
    none) and starts over, so two runs can never hold "the" lock through two different files.
    """
    path = sidecar(out, ".lock")
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:  # no such directory and none can be made, read-only, not a directory
            reason = (f"{exc.filename} is not a directory" if isinstance(exc, FileExistsError)
                      else f"{exc.strerror or exc}: {exc.filename or path.parent}")
            raise OutputUnusable(f"{out}: cannot write the output there ({reason})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputBusy(
                f"{out} is being written by another run ({_holder(path)}); wait for it or choose another output"
            ) from None
        try:
            mine = os.stat(path)
        except FileNotFoundError:
            mine = None
        held = os.fstat(fd)
        if mine is not None and (mine.st_dev, mine.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the current one
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@dataclass
class Checkpoint:
    """Everything a resumed run needs; persisted as ``OUT.progress.json``."""

    fingerprint: dict[str, Any]
    position: int = 0  # input position to continue from (byte offset or Parquet row index)
    lines: int = 0  # input lines consumed (so line numbers in errors stay right after a resume)
    rows: int = 0  # rows written to OUT.partial
    items: int = 0  # responses scored (rows with a list of responses count each response)
    rejected: int = 0  # bad rows skipped with --skip-bad
    out_bytes: int = 0
    rejected_bytes: int = 0
    complete: bool = False
    counts: dict[str, Any] = field(default_factory=dict)  # per-task running totals for the final summary
    version: int = PROGRESS_VERSION


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class ResumableSink:
    """``OUT`` written batch by batch with checkpoints; see the module docstring for the protocol."""

    def __init__(self, out: str | os.PathLike[str], fingerprint: dict[str, Any]) -> None:
        self.out = Path(out)
        self.fingerprint = fingerprint
        self.partial = sidecar(self.out, ".partial")
        self.rejected_path = sidecar(self.out, ".rejected.jsonl")
        self.rejected_partial = sidecar(self.out, ".rejected.jsonl.partial")
        self.progress_path = sidecar(self.out, ".progress.json")
        self.meta_path = sidecar(self.out, ".meta.json")
        self._out: IO[bytes] | None = None
        self._rejected: IO[bytes] | None = None
        self.checkpoint = Checkpoint(fingerprint=fingerprint)
        self.resumed = False

    # -- starting -------------------------------------------------------------------------------
    def finished_meta(self) -> dict[str, Any] | None:
        """The meta of a finished run of *this* fingerprint at ``OUT``, if there is one."""
        self._recover_finish()
        if not self.out.exists() or self.progress_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        return meta if meta.get("fingerprint") == self.fingerprint else None

    def _recover_finish(self) -> None:
        """Complete a run killed inside :meth:`finish`. Once the checkpoint says ``complete``, the
        meta is on disk and every byte is in a partial file or already under its final name, so the
        remaining renames are simply redone (whatever subset of them had happened)."""
        if not self.progress_path.exists():
            return
        try:
            saved = self._load_progress()
        except ResumeRefused:
            return
        if saved.complete:
            self.checkpoint = saved
            self._move_into_place()

    def start(self, *, restart: bool = False, overwrite: bool = False) -> Checkpoint:
        """Open for writing: resume a matching partial run, or start afresh; refuse a mismatch.
        ``restart`` also rescores a finished run of the same fingerprint (replacing its ``OUT``)."""
        if restart:
            replaces_finished = self.finished_meta() is not None
            self.discard_partial()
            overwrite = overwrite or replaces_finished
        else:
            self._recover_finish()
        if self.progress_path.exists():
            saved = self._load_progress()
            if saved.fingerprint != self.fingerprint:
                diff = "; ".join(fingerprint_diff(saved.fingerprint, self.fingerprint))
                raise ResumeRefused(
                    f"{self.partial} is a partial run of a different input or different options ({diff}); "
                    "rerun with the original input and options to resume, or pass --restart to discard it"
                )
            self.checkpoint = saved
            self.resumed = True
        else:
            if self.out.exists() and not overwrite:
                raise OutputExists(
                    f"{self.out} already exists and is not a finished run of this input with these options; "
                    "pass --overwrite to replace it"
                )
            self.discard_partial()
            self.checkpoint = Checkpoint(fingerprint=self.fingerprint)
        self._out = self._open_truncated(self.partial, self.checkpoint.out_bytes)
        if self.checkpoint.rejected_bytes or self.rejected_partial.exists():
            self._rejected = self._open_truncated(self.rejected_partial, self.checkpoint.rejected_bytes)
        if not self.resumed:
            self._save_progress()
        return self.checkpoint

    def discard_partial(self) -> None:
        for path in (self.partial, self.rejected_partial, self.progress_path):
            path.unlink(missing_ok=True)

    def _load_progress(self) -> Checkpoint:
        try:
            data = json.loads(self.progress_path.read_text())
            if data.get("version") != PROGRESS_VERSION:
                raise ValueError(f"version {data.get('version')}")
            return Checkpoint(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ResumeRefused(f"{self.progress_path} is unreadable ({exc}); pass --restart to start over") from exc

    @staticmethod
    def _open_truncated(path: Path, size: int) -> IO[bytes]:
        """Open for appending after cutting the file back to the last checkpointed size."""
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "ab")  # noqa: SIM115 - stays open across batches, closed by close()
        actual = f.seek(0, os.SEEK_END)
        if actual < size:
            f.close()
            raise ResumeRefused(
                f"{path} has {actual} bytes but the checkpoint says {size} were written; "
                "it was modified or lost, pass --restart to start over"
            )
        if actual > size:
            f.truncate(size)  # a batch written after the last checkpoint: it will be redone
            f.seek(size)
        return f

    # -- writing --------------------------------------------------------------------------------
    def commit(self, data: bytes, rejected: bytes, update: dict[str, Any]) -> None:
        """Append one batch durably, then move the checkpoint past it."""
        assert self._out is not None
        if data:
            self._out.write(data)
            self._out.flush()
        os.fsync(self._out.fileno())
        if rejected:
            if self._rejected is None:
                self._rejected = self._open_truncated(self.rejected_partial, self.checkpoint.rejected_bytes)
            self._rejected.write(rejected)
            self._rejected.flush()
            os.fsync(self._rejected.fileno())
        cp = self.checkpoint
        cp.out_bytes += len(data)
        cp.rejected_bytes += len(rejected)
        for key, value in update.items():
            setattr(cp, key, value)
        self._save_progress()

    def _save_progress(self) -> None:
        atomic_write_json(self.progress_path, asdict(self.checkpoint))

    # -- finishing ------------------------------------------------------------------------------
    def finish(self, meta: dict[str, Any]) -> None:
        """Move everything into place. Order: meta, then the checkpoint marked ``complete``, then the
        renames (rejected file first, data last), then drop the checkpoint. A kill anywhere in
        between leaves either an incomplete checkpoint (the rerun resumes at the end of the input
        and finishes) or a complete one (the rerun redoes the renames: :meth:`_recover_finish`)."""
        self.close()
        atomic_write_json(self.meta_path, {**meta, "fingerprint": self.checkpoint.fingerprint})
        self.checkpoint.complete = True
        self._save_progress()
        self._move_into_place()

    def _move_into_place(self) -> None:
        """The renames of a complete checkpoint; idempotent, so a killed finish can simply be redone."""
        if self.checkpoint.rejected_bytes:
            if self.rejected_partial.exists():
                os.replace(self.rejected_partial, self.rejected_path)
        else:
            self.rejected_partial.unlink(missing_ok=True)
            self.rejected_path.unlink(missing_ok=True)
        if self.partial.exists():
            os.replace(self.partial, self.out)
        fsync_dir(self.out.parent)
        self.progress_path.unlink(missing_ok=True)
        fsync_dir(self.out.parent)

    def close(self) -> None:
        for f in (self._out, self._rejected):
            if f is not None and not f.closed:
                f.close()


__all__ = [
    "Checkpoint",
    "OutputBusy",
    "OutputExists",
    "OutputUnusable",
    "ResumableSink",
    "ResumeRefused",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "output_lock",
    "sidecar",
]
