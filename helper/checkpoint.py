"""The one checkpoint reader/writer: atomic writes, ``weights_only`` reads, clear errors."""
from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from helper.errors import UserError


# How torch's weights_only unpickler words a refusal to build or call an arbitrary object.
_NEEDS_CODE = ("Unsupported global", "unsupported GLOBAL", "Trying to call reduce", "Can only create new object",
               "Can only build")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit its architecture (message says why)."""


def save_atomic(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (or a full disk) at any moment leaves either the old file or the new one, never a
    truncated mix; a failed write raises CheckpointError and leaves no temporary file. With
    ``previous``, the file being replaced is kept there (a fallback should ``path`` ever be damaged).
    """
    _write_atomic(path, lambda f: torch.save(obj, f), previous=previous)


def _write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None],
                  previous: str | os.PathLike | None = None) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # the mode torch.save gives, not mkstemp's private 0600
            recorder = _WriteErrorRecorder(f)
            try:
                write(recorder)
            except Exception:
                # torch.save turns a failed write (e.g. ENOSPC) into a bare RuntimeError: report the cause.
                if recorder.error is not None:
                    raise recorder.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _keep_copy(path, Path(previous))
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} (if any) "
                              f"is intact. Free some space or fix the folder's permissions (or choose "
                              f"another --save_root)") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it even for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _WriteErrorRecorder:
    """A binary file that remembers the first OSError of its writes."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _keep_copy(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` without a moment where ``path`` is missing (a hard link)."""
    link = previous.with_name(f".{previous.name}.tmp")
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)
        os.replace(link, previous)
    except OSError:  # no hard links here: a rename (resume falls back to ``previous`` if ``path`` is gone)
        os.replace(path, previous)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; not every platform can open a folder, which only costs durability."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``: no code runs) onto ``map_location``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch raises pickle/zip/runtime errors of many types
        text = str(e)
        if any(sign in text for sign in _NEEDS_CODE):
            needs = re.search(r"GLOBAL (\S+)", text)
            raise CheckpointError(
                f"{path} holds Python objects that need code execution to load"
                f"{f' ({needs.group(1)})' if needs else ''}; checkpoints are loaded with "
                f"torch.load(weights_only=True) for safety, so it is refused. Re-save it with plain "
                f"tensors/dicts (e.g. torch.save({{'model': state_dict}}, path))."
            ) from None
        damage = describe_damage(path)
        if damage is not None:
            raise CheckpointError(f"{path} is {damage}: not a readable PyTorch checkpoint") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = detail.group(1) if detail else (text.splitlines()[0] if text else "")
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt?): "
                              f"{type(e).__name__}: {detail}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, expected a checkpoint dict")
    return ckpt


def describe_damage(path: str | os.PathLike) -> str | None:
    """What is wrong with a file torch.load refused, read from its bytes: empty, truncated, not a zip archive
    (torch.save's format), a corrupt archive member; None when the archive itself is sound (or it is the
    legacy pickle format, which has no such structure)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
        if size == 0:
            return "empty (0 bytes)"
        if head != b"PK\x03\x04":
            if head[:1] == b"\x80":  # a pickle: the legacy torch.save format
                return None
            return f"not a zip archive, as torch.save writes (it starts with {head!r})"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every member and checks its CRC
        except (zipfile.BadZipFile, EOFError):
            return f"truncated ({size} bytes, the end of its zip archive is missing: an unfinished write or copy)"
        except (OSError, zlib.error) as e:
            return f"a corrupt zip archive ({e})"
        return None if bad is None else f"corrupt (archive member {bad} fails its CRC check)"
    except OSError:
        return None


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 3) -> str | None:
    """Describe the first differences between ``model``'s state_dict and ``state``, or None."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing:
        problems.append("missing keys " + ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else ""))
    if unexpected:
        problems.append("unexpected keys " + ", ".join(unexpected[:limit])
                        + (" ..." if len(unexpected) > limit else ""))
    for k in shapes[:limit]:
        problems.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    return "; ".join(problems) or None


def load_model_weights(model: nn.Module, path: str | os.PathLike, arch: str,
                       map_location: str | torch.device = "cpu",
                       hint: str = "Is it a checkpoint of another model? (use --model_t to name it)") -> dict:
    """Load ``ckpt['model']`` (or a plain state_dict file, such as torchvision's published weights) from ``path``
    into ``model`` with ``strict=True``; return the checkpoint."""
    ckpt = load_checkpoint(path, map_location)
    plain = "model" not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
    state = ckpt if plain else ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'model' state_dict and is not a state_dict itself "
                              f"(keys: {sorted(ckpt)[:5]})")
    problem = state_dict_mismatch(model, state)
    if problem:
        raise CheckpointError(f"{path} does not fit architecture {arch}: {problem}. {hint}".rstrip())
    model.load_state_dict(state, strict=True)
    return ckpt


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    """Write JSON through a temporary file + rename, so readers never see half a file."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    _write_atomic(path, lambda f: f.write(text.encode()))


def ensure_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and check that a file can be written in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable ({e.strerror}); choose another "
                        f"--save_root or fix its permissions") from None
