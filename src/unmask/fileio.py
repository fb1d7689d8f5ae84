"""Writing files so that a crash, a full disk or a kill never leaves a half-written one under its real name.

Checkpoints and token caches are both built in a hidden temporary folder beside their final
place and renamed into it in one step (:func:`publish_folder`); small files are replaced the same
way (:func:`write_atomic`). A folder being replaced or deleted is first renamed aside
(:func:`discard_folder`), so no reader ever sees it half deleted. Files get the user's umask, as
any program's would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def within(folder: Path, name: str) -> Path | None:
    """``folder / name`` when that path stays inside ``folder`` (symbolic links followed), else None.

    A name read from a file in the folder (a tokenizer's data file, a checkpoint pointer, a shard of an
    index) is the folder's own word, not the user's: it may not lead elsewhere (``../``, an absolute path).
    """
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    path = folder / name
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return None
    return path


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folder itself) to disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    fsync_dir(folder)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a hidden temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file with the user's umask (safetensors itself writes it private, 0600)."""
    save_file({name: value.detach().contiguous() for name, value in tensors.items()}, path)
    os.chmod(path, FILE_MODE)


def discard_folder(folder: Path) -> None:
    """Delete ``folder`` after renaming it aside, so that no crash leaves it half deleted under its name."""
    aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(final: Path, tag: str = "tmp") -> Iterator[Path]:
    """A new hidden folder beside ``final`` to build in; removed again if the build fails.

    The caller publishes it with :func:`publish_folder` inside the ``with`` block; whatever is
    left when the block ends (a build cut short by an error, a full disk) is deleted.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}~{tag}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, final: Path, *, replace: bool) -> bool:
    """Rename the complete folder ``tmp`` to ``final``; with ``replace`` an existing ``final`` goes first.

    Without ``replace`` an existing ``final`` wins (another process built the same thing) and False
    is returned. The folder's files are flushed to disk before the rename.
    """
    fsync_tree(tmp)
    if replace and final.exists():
        discard_folder(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if replace or not final.exists():
            raise
        return False
    fsync_dir(final.parent)
    return True


def remove_leftovers(folder: Path, *, is_alive=None) -> None:
    """Delete the hidden temporary and set-aside folders a killed process left in ``folder``.

    Names are ``.NAME~TAG~HOST~PID~RANDOM`` (staging) and ``.NAME.RANDOM.old`` (discarded). A
    staging folder is removed only when it was made on this machine by a process that is gone
    (``is_alive(pid)``, default: signal 0): on a shared file system another machine may be building.
    """
    if not folder.is_dir():
        return
    alive = is_alive or _pid_alive
    host = socket.gethostname()
    for entry in folder.iterdir():
        if not (entry.name.startswith(".") and entry.is_dir()):
            continue
        if entry.name.endswith(".old"):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        parts = entry.name.rsplit("~", 3)
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not alive(int(parts[2])):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
