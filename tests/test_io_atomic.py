import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneless.errors import TunelessError
from tuneless.io_atomic import atomic_torch_save, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text("one", path)
    atomic_write_text("two", path)
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["a.txt"]


def test_mode_follows_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "a.txt")
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"x": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["m.pt"]


def _special_targets(tmp_path):
    """(name, path) of targets a writer must refuse; the device only where mknod works."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = [("FIFO", fifo), ("directory", tmp_path)]
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        out.append(("character device", dev))
        (tmp_path / "link").symlink_to(dev)
        out.append(("symlink to a device", tmp_path / "link"))
    except PermissionError:
        pass
    return out


@pytest.mark.parametrize("writer", [lambda p: atomic_write_text("x", p),
                                    lambda p: atomic_torch_save({"w": torch.ones(1)}, p)])
def test_refuses_targets_that_are_not_regular_files(tmp_path, writer):
    for kind, target in _special_targets(tmp_path):
        before = os.stat(target, follow_symlinks=True)
        with pytest.raises(TunelessError, match="not a regular file"):
            writer(target)
        after = os.stat(target, follow_symlinks=True)
        assert (before.st_mode, before.st_ino) == (after.st_mode, after.st_ino), kind
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_symlink_to_a_file_is_followed_and_kept(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    (tmp_path / "link.txt").symlink_to(real)
    atomic_write_text("new", tmp_path / "link.txt")
    assert (tmp_path / "link.txt").is_symlink() and real.read_text() == "new"


def test_read_only_refused_and_permissions_kept(tmp_path):
    ro = tmp_path / "ro.txt"
    ro.write_text("keep")
    ro.chmod(0o444)
    with pytest.raises(TunelessError, match="read-only"):
        atomic_write_text("x", ro)
    assert ro.read_text() == "keep" and stat.S_IMODE(ro.stat().st_mode) == 0o444
    private = tmp_path / "p.txt"
    private.write_text("a")
    private.chmod(0o600)
    atomic_write_text("b", private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "b"


def test_impossible_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TunelessError, match="(?i)not a directory"):
        atomic_write_text("x", tmp_path / "file" / "out.txt")
    with pytest.raises(TunelessError, match="cannot write"):
        atomic_write_text("x", "/proc/tuneless-test/out.txt")


def test_same_object_gives_the_same_bytes(tmp_path):
    obj = {"w": torch.arange(6.0).view(2, 3), "meta": {"a": [1, 2]}}
    atomic_torch_save(obj, tmp_path / "a.pt")
    atomic_torch_save(obj, tmp_path / "b.pt")
    atomic_torch_save(obj, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "m.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".m.pt.tuneless-{dead}-abcd1234.tmp"
    legacy = tmp_path / ".m.pt.k2j3h4g5.tmp"
    live = tmp_path / f".m.pt.tuneless-{os.getppid()}-abcd1234.tmp"  # a running process
    other = tmp_path / ".other.pt.k2j3h4g5.tmp"
    for p in (stale, legacy, live, other):
        p.write_bytes(b"partial")
    atomic_write_text("x", target)
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and other.exists()


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    script = (
        "import sys, time\n"
        "from tuneless.io_atomic import atomic_write\n"
        "def slow(fh):\n"
        "    fh.write(b'partial'); fh.flush(); print('writing', flush=True); time.sleep(30)\n"
        f"atomic_write({str(tmp_path / 'out.bin')!r}, slow)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
