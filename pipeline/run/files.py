"""Writing outputs safely, and the one lock, for every stage.

Every file our code writes goes through `atomic` (or the helpers below that use it): the bytes go to
a temporary file in the same folder, are flushed to the disk (fsync), the file is renamed over the
final name, and the folder's new entry is flushed too. (What libraries write in their own way is
theirs: zarr's chunks, which it replaces atomically itself, dvclive's curve, and diffusers'
`save_pretrained` folders of `agd pretrain` and the transfer study.) A kill or a power cut at any moment leaves
the old file or the new one under the final name, never a part of one. The temporary name keeps the
final suffix (`.name.<random>.part.npz`), because writers such as numpy, PIL and matplotlib choose
their format by it.

`exclusive` is the one lock (filelock's, an OS-level flock on Linux): a second writer of the same
output is refused at once instead of interleaving with the first; the OS releases the lock when a
holder dies.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.run.errors import AGDError

PART = ".part"  # in every temporary name: what a killed writer may leave behind


def temporary_name(path: Path) -> Path:
    """A fresh name beside `path` for its next version (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{PART}{path.suffix}")


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)



def sha256_of(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (assets of 100 MB, adapters of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """`with atomic(out) as tmp: write tmp`: on success tmp replaces out durably; on any error out is
    untouched and tmp is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None:  # a failed write names no file: name the output
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, doc) -> None:
    """JSON as the reports are written: two-space indent, one trailing newline."""
    write_text(path, json.dumps(doc, indent=2) + "\n")


# The disk's refusals a user can act on, and what to do; anything else is a bug and keeps its traceback.
DISK_ERRORS = {
    errno.ENOSPC: "free space on that disk (or point the output elsewhere), then run the command again",
    errno.EDQUOT: "free space within your quota (or point the output elsewhere), then run the command again",
    errno.EACCES: "make it writable for this user (or point the output elsewhere), then run the command again",
    errno.EPERM: "make it writable for this user (or point the output elsewhere), then run the command again",
    errno.EROFS: "point the output at a writable filesystem (this one is read-only), then run the command again",
    errno.EIO: "check the disk, then run the command again",
}


def disk_error(err: OSError) -> AGDError | None:
    """A refusal of the disk as one error line (the path, the cause, the fix), or None when it is not one.
    Work already finished is kept: the stages resume from what is on disk."""
    if err.errno not in DISK_ERRORS:
        return None
    where = err.filename or "the disk"
    return AGDError(str(where), err.strerror or os.strerror(err.errno),
                    DISK_ERRORS[err.errno] + " (finished work is kept and resumed)")


def remove_parts(folder: Path) -> int:
    """Delete what killed writers left in `folder` (temporary `.part` files); returns how many."""
    stale = [p for p in Path(folder).glob(f".*{PART}*") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink()
    return len(stale)


@contextmanager
def exclusive(lock_file: Path, where: str, problem: str) -> Iterator[None]:
    """Hold `lock_file` for as long as the block runs; a second holder is refused with one error
    (`where`: the output it protects; `problem`: what the holder is doing)."""
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise AGDError(where, problem, "wait for it to finish (or stop it) and run again") from None
    try:
        yield
    finally:
        lock.release()
