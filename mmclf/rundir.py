"""The run folder every stage writes into, and the process helpers around it.

A stage's output folder holds its resolved config (`config.yaml`) beside its outputs. `RunFolder.open` checks
that config against the one already there: a new run refuses a folder that holds another run, a resumed run
refuses a changed config with one message naming every changed key. Every process looks before the main one
writes, with barriers around the write, so `accelerate launch` and a plain process behave alike.

Outputs appear whole or not at all: `staged_folder` and `staged_file` write beside the target and rename it
into place when complete. The done marker (`.mmclf_done.json`) records the fingerprint of what a step was run
from and a digest of what it wrote; workflows skip a step whose marker matches (`mmclf.workflow`).

Nothing here imports accelerate at module level: serving and prediction use the staging helpers too.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

CONFIG_FILE = "config.yaml"
DONE_FILE = ".mmclf_done.json"
LOCK_FILE = ".mmclf_lock"
PARTIAL_TAG = ".partial-"


# --- processes -----------------------------------------------------------------------------------------------

def process_state():
    """This process's rank and device. Honours ACCELERATE_USE_CPU like Accelerator does (a bare PartialState()
    created first would miss a multi-process CPU launch)."""
    from accelerate.state import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    process_state().wait_for_everyone()


def print_once(*args) -> None:
    process_state().print(*args)


@contextlib.contextmanager
def main_process_writes():
    """Every process waits before (all have read what is there) and after (all see what was written); the body
    runs where `yield` gives True, on the main process only: `with main_process_writes() as main: if main: ...`"""
    state = process_state()
    state.wait_for_everyone()
    yield state.is_main_process
    state.wait_for_everyone()


def end_processes() -> None:
    """Tear down the process group at the end of a command: left to interpreter exit, gloo's threads can abort
    the process ("terminate called without an active exception")."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# --- whole or not at all -------------------------------------------------------------------------------------

def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale_partials(target: Path) -> None:
    """Remove the staging folders and files of writes into `target` whose process is gone (killed). A replaced
    folder set aside by a write killed before its new folder was in place is restored as `target` first."""
    prefix = f".{target.name}{PARTIAL_TAG}"
    if not target.parent.is_dir():
        return
    for path in sorted(target.parent.iterdir()):
        if path.name.startswith(prefix):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if not (pid.isdigit() and _running(int(pid))):
                aside = path / "old"
                if aside.is_dir() and not (target.exists() or target.is_symlink()):
                    aside.rename(target)
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(target, *, replace: bool = False):
    """Yield an empty folder beside `target`; when the body ends without error it becomes `target` (an existing
    one is replaced when `replace`, else it is an error). On error, or a kill, `target` is left as it was; a kill
    between setting the old folder aside and renaming the new one into place leaves the old one in the staging
    folder, and the next write into `target` puts it back before anything else."""
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not replace:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_TAG}{os.getpid()}-", dir=target.parent))
    try:
        staged = work / "new"
        staged.mkdir()
        yield staged
        if target.exists() or target.is_symlink():
            aside = work / "old"
            target.rename(aside)
            try:
                staged.rename(target)
            except BaseException:
                aside.rename(target)
                raise
        else:
            staged.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def staged_file(target):
    """Yield a path beside `target` to write; it replaces `target` (atomically) when the body ends without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}{PARTIAL_TAG}{os.getpid()}-", dir=target.parent,
                                    suffix=target.suffix)
    os.close(handle)
    staged = Path(name)
    try:
        yield staged
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def write_text(path, text: str) -> Path:
    with staged_file(path) as staged:
        staged.write_text(text)
    return Path(path)


def write_json(path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str))


# --- configs ---------------------------------------------------------------------------------------------------

def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(saved: dict, current: dict, ignore=()) -> list[str]:
    """Dotted keys whose values differ between two configs, outside `ignore` (exact keys or `prefix.*` patterns)."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not any(fnmatch.fnmatchcase(k, pattern) for pattern in ignore))


def describe_differences(saved: dict, current: dict, keys: list[str]) -> str:
    a, b = flatten(saved), flatten(current)
    return "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def write_config(config: dict, path) -> Path:
    return write_text(path, yaml.safe_dump(config, sort_keys=False))


def read_config(path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of keys to values")  # noqa: TRY004
    return config


# --- the run folder lock ---------------------------------------------------------------------------------------

class RunFolderBusy(ValueError):
    """Another process is writing into the run folder."""


_held_locks: dict[Path, int] = {}  # resolved folder -> the open lock file of this process


def lock_folder(path) -> str:
    """Take `path`'s lock (an exclusive `flock` on LOCK_FILE, which names the holder's pid and host), or raise
    RunFolderBusy naming the holder. The kernel drops the lock of a process that dies, so the lock of a killed run
    is taken over (returned: its holder, "" when the lock was released cleanly). Re-entrant within a process."""
    import fcntl
    import socket

    path = Path(path)
    key = path.resolve()
    if key in _held_locks:
        return ""
    path.mkdir(parents=True, exist_ok=True)
    handle = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    previous = os.pread(handle, 4096, 0).decode(errors="replace").strip()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        holder = previous or "a process that has not written its name yet"
        raise RunFolderBusy(f"{path} is in use by another run ({holder}): wait for it to end or choose another "
                            "output folder") from None
    previous = os.pread(handle, 4096, 0).decode(errors="replace").strip()  # as the holder left it
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%F %T')}\n".encode(), 0)
    _held_locks[key] = handle
    return previous


def unlock_folder(path) -> None:
    import fcntl

    handle = _held_locks.pop(Path(path).resolve(), None)
    if handle is not None:
        os.ftruncate(handle, 0)  # an empty lock file: released cleanly
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


# --- the run folder --------------------------------------------------------------------------------------------

class RunFolder:
    """A stage's output folder: `config.yaml` (the resolved config), the outputs, and the done marker.

    resume_free: keys that may change when a run is resumed or rerun (they do not change what is computed), as
    exact dotted keys or `prefix.*` patterns.
    """

    def __init__(self, path, resume_free=()):
        if path in (None, ""):
            raise ValueError("no output folder given: set output_dir=DIR")
        self.path = Path(path)
        self.resume_free = tuple(resume_free)

    def __truediv__(self, name) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    def saved_config(self) -> dict | None:
        return read_config(self.config_file) if self.config_file.is_file() else None

    def open(self, config: dict, *, resume: bool = False, rerun: bool = False) -> bool:
        """Check `config` against the folder's and write it; True when the folder already held a run (continued).

        A folder holding a run is refused unless `resume` (continue it) or `rerun` (the stage redoes the cheap part
        of its work in place); either way its config must match, but for `resume_free` keys. The main process locks
        the folder first (`lock_folder`): a second process writing into it gets an error naming the holder; `close`
        (or the end of the process) releases it."""
        self.lock()
        saved = self.saved_config()
        if saved is not None:
            if not (resume or rerun):
                raise ValueError(f"{self.path} already holds a run ({self.config_file}); pass --resume "
                                 f"(resume=true) to continue it or choose another output folder")
            changed = config_differences(saved, config, self.resume_free)
            if changed:
                raise ValueError(f"cannot resume {self.path}: its {CONFIG_FILE} differs from this config in "
                                 f"{describe_differences(saved, config, changed)}; choose another output folder")
        with main_process_writes() as main:  # every process has looked before the main one writes
            if main:  # without `resume`: how this start was asked for, not what the folder holds
                write_config({k: v for k, v in config.items() if k != "resume"}, self.config_file)
        return saved is not None

    def lock(self) -> None:
        """The main process takes the lock; every process raises the same error when it is held elsewhere."""
        state = process_state()
        error = None
        if state.is_main_process:
            try:
                stale = lock_folder(self.path)
            except RunFolderBusy as busy:
                error = str(busy)
            else:
                if stale:
                    print(f"{self.path}: took over the lock of a run that ended without releasing it ({stale})")
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error:
            raise RunFolderBusy(error)

    def close(self) -> None:
        """Release the folder's lock (the stage is done)."""
        if is_main_process():
            unlock_folder(self.path)

    def write_json(self, name: str, data) -> Path:
        """JSON written by the main process (atomically); every process gets the path."""
        path = self.path / name
        if is_main_process():
            write_json(path, data)
        return path

    def save_table(self, table, name: str) -> Path:
        path = self.path / name
        if is_main_process():
            table.save(path)
        return path

    # done markers ----------------------------------------------------------------------------------------------

    def done_marker(self) -> dict | None:
        path = self.path / DONE_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def mark_done(self, fingerprint: str, **details) -> dict:
        marker = {"fingerprint": fingerprint, "outputs": folder_digest(self.path), "finished": time.time(), **details}
        if is_main_process():
            write_json(self.path / DONE_FILE, marker)
        return marker

    def clear_done(self) -> None:
        if is_main_process():
            (self.path / DONE_FILE).unlink(missing_ok=True)


# --- content fingerprints --------------------------------------------------------------------------------------

SKIPPED_PARTS = {"checkpoints", "logs", "__pycache__"}  # written during a run, never read by a later stage
DERIVED_FILES = ("cache-*.arrow", "tmp*")  # what `datasets` writes beside a dataset it reads: not its content


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(path) -> str:
    """sha256 over the sorted (relative path, content digest) of every file under `path` (a file: its content),
    leaving out checkpoints, logs, staging leftovers and the done marker."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if (file.name in (DONE_FILE, LOCK_FILE) or SKIPPED_PARTS & set(relative.parts[:-1]) or PARTIAL_TAG in str(relative)
                or any(fnmatch.fnmatchcase(file.name, pattern) for pattern in DERIVED_FILES)):
            continue
        digest.update(f"{relative.as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()
