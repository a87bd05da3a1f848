"""Write outputs atomically and safely: never a half-written file, never a clobbered device.

Every file tuneless writes goes through `atomic_write`: a temporary file beside the target,
fsync, then rename. Before that, the target is checked: a path that exists and is not a
regular file (a device such as /dev/null, a FIFO, a socket, a directory, or a symlink to
one) is refused, and so is a read-only file; a symlink to a regular file is followed, so
the link survives; an existing file keeps its permission bits. The temporary file is
removed on every exit path, SIGTERM and SIGHUP included; one left by a killed run
(SIGKILL) carries its writer's pid in its name and is removed by the next write to that
path. torch.save writes through a file handle, so the zip's member names do not depend
on the temporary name: the same object gives the same bytes (and sha256) every time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tuneless.errors import TunelessError

_TMP_TAG = ".tuneless-"
_LEGACY_TMP = re.compile(r"^[a-z0-9_]{8}\.tmp$")  # mkstemp names of older versions


def _umask_mode() -> int:
    """The mode a normally created file gets (temporary files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def check_target(path: str | os.PathLike) -> Path:
    """The real path a write to `path` will replace; one-line error if it must not be.

    Commands call this before long work, so a bad `-o` fails in a second, not after it.
    """
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    if path.is_symlink() and not real.exists():
        raise TunelessError(f"refusing to write {path}: it is a symlink to nothing ({real})")
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise TunelessError(f"cannot write {path}: {exc.strerror or exc}") from None
    if st is not None:
        for test, kind in _KINDS:
            if test(st.st_mode):
                via = f" (via the symlink {path})" if real != path else ""
                raise TunelessError(f"refusing to write {real}{via}: it is {kind}, not a "
                                    "regular file")
        if not st.st_mode & 0o222:
            raise TunelessError(f"refusing to overwrite {path}: the file is read-only")
    parent = real.parent
    for up in (real.parent, *real.parent.parents):  # the nearest existing ancestor
        if up.exists():
            parent = up
            break
    if not parent.is_dir():
        raise TunelessError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TunelessError(f"cannot write {path}: no permission to write in {parent}")
    return real


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of earlier writes to `target` whose writer is no longer running."""
    removed = []
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if rest.startswith(_TMP_TAG[1:]) and rest.endswith(".tmp"):
            pid_text = rest[len(_TMP_TAG) - 1:].split("-", 1)[0]
            if pid_text.isdigit() and _alive(int(pid_text)):
                continue
        elif not _LEGACY_TMP.match(rest):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit while writing, so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(fh) on a temporary file beside `path`, then rename it over `path`."""
    real = check_target(path)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunelessError(f"cannot write {path}: cannot create the folder {real.parent} "
                            f"({exc.strerror or exc})") from None
    remove_stale_temporaries(real)
    try:
        old = os.stat(real)
    except FileNotFoundError:
        old = None
    tmp = real.parent / f".{real.name}{_TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    with exit_on_signals():
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if old is not None:
                os.chmod(tmp, stat.S_IMODE(old.st_mode))
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
            else:
                os.chmod(tmp, _umask_mode())
            os.replace(tmp, real)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TunelessError(f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a file handle (reproducible bytes) and an atomic rename."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to fill; on success it gets the permissions
    a plain mkdir/open would give and is renamed to `folder` (which must not exist), on any
    failure or SIGTERM/SIGHUP it is removed: a model folder appears whole or not at all."""
    import shutil
    import tempfile

    folder = Path(folder)
    if folder.exists():
        raise TunelessError(f"{folder} already exists; choose a new output folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    with exit_on_signals():
        try:
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            for f in tmp.iterdir():
                if f.is_file():
                    os.chmod(f, 0o666 & ~umask)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
