"""Writing files safely: atomic replacement, the run-directory lock, outputs that are inputs.

- `atomic_file` writes a file under a fresh temporary name beside it and renames it over
  the target at the end. The temporary file is created with O_CREAT | O_EXCL | O_NOFOLLOW
  under a random name, so nothing planted in the folder (a symbolic link at a name we
  would use) can redirect the write; the rename replaces a link at the target itself,
  never the file it points to.
- `exclusive_lock` holds an OS lock (`flock`) on a lock file while a block runs; the
  kernel releases it when the process dies, so a killed holder leaves no stale lock.
- `check_not_an_input` refuses an output path that is one of the command's inputs
  (the same resolved path, or the same file under another name: a hard link).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from seq2seq.errors import ArgumentError, DataError, InUse

TEMP_MARK = ".tmp-"  # temporary files are named `.{target name}.tmp-{random}`


def temp_files(path: Path) -> list[Path]:
    """The temporary files that `atomic_file(path)` calls cut short by a kill left behind
    (`path`'s name may be a glob pattern: "step-*.pt")."""
    return sorted(path.parent.glob(f".{path.name}{TEMP_MARK}*"))


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None
                ) -> Iterator[IO]:
    """A file object for `path`, written under a new temporary name in the same folder,
    flushed to the disk and renamed over `path` only when the block ends without error;
    otherwise (an exception, SIGINT, or SIGTERM under the CLI) the temporary file is removed.

    The temporary file is created afresh (O_EXCL: a name that exists, even as a symbolic
    link, is never opened) with the mode any new file gets (0666 less the umask).
    """
    path = Path(path)
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_temp(path: Path) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return _fresh(path, lambda tmp: os.open(tmp, flags, 0o666))


def make_temp_folder(path: str | Path) -> Path:
    """A new, empty folder beside `path`, named `.{name}.tmp-{random}` (never one that
    existed: mkdir makes it or fails), to build `path` in and rename it into place."""
    return _fresh(Path(path), os.mkdir)[0]


def _fresh(path: Path, make) -> tuple[Path, Any]:
    """`make(tmp)` for the first temporary name `tmp` of `path` that does not exist yet."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}")
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def make_folder(path: str | Path) -> Path:
    """Create the folder `path` (and its parents) unless it exists; DataError naming the
    path if something else is in the way or it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{path}: exists and is not a folder") from None
    except NotADirectoryError:
        raise DataError(f"{path}: cannot be made, a file is in the way on its path") from None
    except OSError as err:
        raise DataError(f"{path}: cannot make the folder ({err.strerror})") from None
    return path


@contextmanager
def exclusive_lock(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if needed) while the block runs, with
    this process's PID written in it. InUse naming the holder's PID if another process
    holds it; `what` says what the lock protects, for the message."""
    lock_path = Path(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise DataError(f"{lock_path}: cannot open the lock file ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise InUse(f"{what} is in use by another process (PID {holder}, holding "
                        f"{lock_path}); wait for it to end, or choose another folder"
                        ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_not_an_input(output: str | Path, flag: str,
                       inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """ArgumentError if the output file `output` (given as `flag`) is one of `inputs`
    ((flag, path) pairs; None for an absent one): the same path once resolved, or the same
    file under another name (a hard link)."""
    for name, path in inputs:
        if path is not None and _same_file(Path(output), Path(path)):
            raise ArgumentError(
                f"{flag} {output} is the same file as {name} {path}; writing it would "
                "destroy an input (choose another output file)", argument=flag)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare the paths
        return a.resolve() == b.resolve()
