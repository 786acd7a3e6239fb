"""State on disk: the managed SSH key pair, pinned host keys and small JSON records.

Everything lives under one state directory (mode 0700). Every file in it is readable by its
owner only (0600) from the moment it exists:

- ``id_ed25519`` — the private half of the user's key pair, created once by exclusive create and
  never overwritten; a copy that others may read is refused, as OpenSSH refuses it.
- ``host_keys/<instance-id>.pub`` — the pinned public host key: the one handed to an instance at
  launch (its first SSH connection must present exactly this key), replaced once by the key the
  instance made itself after that first verified connection (host key rotation).
- ``host_keys/<instance-id>.next.pub`` — during a rotation: the new key, learnt over the verified
  channel and pinned here *before* the instance starts using it, so no crash loses it.
- ``host_keys/<instance-id>.retired.pub`` — after a rotation: the handed-over key, which no
  longer authenticates the instance (kept to prove it, and to mark the rotation done).
- ``<name>.json`` — records of later layers (instances, tokens, ports), each written atomically
  (a 0600 temporary file, then ``os.replace``), so a reader never sees half a file. Records that
  belong to one instance are named ``<instance-id>`` or ``<instance-id>.<what>`` (for example
  ``i-0123456789abcdef0.token``) so that :meth:`StateStore.forget` finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import ConflictError, ValidationError
from .keys import (
    KeyMaterial,
    generate_ed25519,
    public_key_blob,
    read_private_key,
    write_private_file,
)

#: File name of the managed private key inside the state directory.
KEY_FILE_NAME = "id_ed25519"
#: Sub-directory of pinned host keys.
HOST_KEYS_DIR = "host_keys"

_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_RECORD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_instance_id(value: Any, field: str = "instance_id") -> str:
    """An EC2 instance id: ``i-`` followed by 8 or 17 lower-case hex digits."""
    if not isinstance(value, str) or not _INSTANCE_ID.match(value):
        raise ValidationError(
            field, f"{str(value)[:40]!r} is not an instance id (i- and 8 or 17 hex digits)."
        )
    return value


def _validate_record_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not _RECORD_NAME.match(name)
        or ".." in name
        or name.endswith((".tmp", "."))
    ):
        raise ValidationError(
            "name", f"{str(name)[:40]!r} is not a record name (letters, digits, '.', '_', '-')."
        )
    return name


def _validate_host_public_key(public_openssh: Any) -> str:
    if not isinstance(public_openssh, str):
        raise ValidationError("public_key", "A host key must be an OpenSSH public key line.")
    line = public_openssh.strip()
    if "\n" in line or "\r" in line:
        raise ValidationError("public_key", "A host key must be a single line.")
    kind, blob = public_key_blob(line)
    if kind != "ssh-ed25519" or len(blob) != 51:  # 4+11 ("ssh-ed25519") + 4+32
        raise ValidationError("public_key", "Only ed25519 host keys are pinned.")
    # Keep type and key only: a comment is not part of the identity.
    return " ".join(line.split()[:2])


class StateStore:
    """The state directory of jupyter-ec2 (see the module docstring for its layout)."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.root = Path(state_dir).expanduser()
        self._lock = threading.RLock()
        self._ensure_private_dir(self.root)

    # -- directories -----------------------------------------------------------------------

    @staticmethod
    def _ensure_private_dir(path: Path) -> None:
        """Create ``path`` 0700, or tighten an existing directory of ours to 0700."""
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise ValidationError(
                "state_dir", f"The state directory {path.name} is not a directory."
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ValidationError(
                "state_dir", f"The state directory {path.name} belongs to another user."
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(path, 0o700)

    @property
    def key_path(self) -> Path:
        """Where the managed private key lives."""
        return self.root / KEY_FILE_NAME

    def _host_key_path(self, instance_id: str) -> Path:
        return self.root / HOST_KEYS_DIR / f"{validate_instance_id(instance_id)}.pub"

    def _record_path(self, name: str) -> Path:
        return self.root / f"{_validate_record_name(name)}.json"

    # -- the user's key pair ---------------------------------------------------------------

    def load_or_create_key_pair(self) -> KeyMaterial:
        """The managed ed25519 key pair: loaded if present, else generated and written 0600.

        The file is created exclusively with mode 0600 and never overwritten. A key file that
        others may read or write is refused (``ValidationError`` naming ``key_file``) rather than
        silently fixed: its secrecy can no longer be trusted.
        """
        with self._lock:
            path = self.key_path
            if not path.exists():
                material = generate_ed25519()
                if self._publish_key(path, material.private_openssh):
                    return material
            return read_private_key(path)

    def _publish_key(self, path: Path, text: str) -> bool:
        """Make ``path`` hold ``text`` unless it exists; True if this call created it.

        The key is written 0600 (exclusive create) under a temporary name and hard-linked into
        place, so another process never sees a half-written key file and an existing key is
        never replaced. Where hard links are not supported, it falls back to an exclusive
        create of ``path`` itself.
        """
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        write_private_file(tmp, text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # another process won the race: use its key
        except OSError:
            try:
                write_private_file(path, text)
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return True

    # -- pinned host keys --------------------------------------------------------------------

    def pin_host_key(self, instance_id: str, public_openssh: str) -> None:
        """Remember the host key an instance was launched with.

        Pinning the same key again is a no-op; pinning a different key for an instance that
        already has one is refused (``ConflictError``), because that is exactly what an attacker
        in the middle would ask for.
        """
        key = _validate_host_public_key(public_openssh)
        with self._lock:
            path = self._host_key_path(instance_id)
            current = self.pinned_host_key(instance_id)
            if current is not None:
                if current == key:
                    return
                raise ConflictError(
                    f"Instance {instance_id} already has a different host key pinned."
                )
            self._ensure_private_dir(path.parent)
            self._atomic_write(path, key + "\n")

    def pinned_host_key(self, instance_id: str) -> str | None:
        """The pinned public host key (``ssh-ed25519 AAAA…``) of an instance, or None."""
        return self._read_key(self._host_key_path(instance_id))

    def _read_key(self, path: Path) -> str | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return _validate_host_public_key(text)

    def _side_key_path(self, instance_id: str, what: str) -> Path:
        return self.root / HOST_KEYS_DIR / f"{validate_instance_id(instance_id)}.{what}.pub"

    def begin_host_key_rotation(self, instance_id: str, current: str, new: str) -> None:
        """Pin ``new`` as the coming host key of an instance whose pinned key is ``current``.

        Called with a key learnt over a connection verified with ``current``, before the
        instance switches to it; :meth:`finish_host_key_rotation` makes it the pinned key once a
        connection has verified it. A different pinned key is refused (``ConflictError``).
        """
        current, new = _validate_host_public_key(current), _validate_host_public_key(new)
        with self._lock:
            if self.pinned_host_key(instance_id) != current:
                raise ConflictError(
                    f"Instance {instance_id}'s pinned host key changed during the rotation."
                )
            path = self._side_key_path(instance_id, "next")
            self._ensure_private_dir(path.parent)
            self._atomic_write(path, new + "\n")

    def pending_host_key(self, instance_id: str) -> str | None:
        """The key of a rotation begun but not finished, or None."""
        return self._read_key(self._side_key_path(instance_id, "next"))

    def finish_host_key_rotation(self, instance_id: str, new: str) -> None:
        """Make the pending key ``new`` the pinned one; the old one is kept as retired.

        Repeating it for a key already pinned is a no-op; any key but the pending one is
        refused (``ConflictError``).
        """
        new = _validate_host_public_key(new)
        with self._lock:
            pinned = self.pinned_host_key(instance_id)
            pending_path = self._side_key_path(instance_id, "next")
            if pinned == new:
                with contextlib.suppress(FileNotFoundError):
                    pending_path.unlink()
                return
            if self.pending_host_key(instance_id) != new:
                raise ConflictError(f"{instance_id}: that host key was never pinned as coming.")
            if pinned is not None:
                self._atomic_write(self._side_key_path(instance_id, "retired"), pinned + "\n")
            self._atomic_write(self._host_key_path(instance_id), new + "\n")
            pending_path.unlink()

    def retired_host_key(self, instance_id: str) -> str | None:
        """The handed-over key a finished rotation replaced, or None (not rotated)."""
        return self._read_key(self._side_key_path(instance_id, "retired"))

    def host_key_rotated(self, instance_id: str) -> bool:
        """Whether the instance's handed-over host key was replaced by one it made itself."""
        return self._side_key_path(instance_id, "retired").exists()

    # -- generic JSON records ----------------------------------------------------------------

    def write_json_secret(self, name: str, obj: Any) -> None:
        """Write ``<name>.json`` atomically with mode 0600 (the JSON must be serialisable)."""
        text = json.dumps(obj, indent=1, sort_keys=True)
        with self._lock:
            self._atomic_write(self._record_path(name), text + "\n")

    def read_json(self, name: str) -> Any:
        """The content of ``<name>.json``, or None if there is no such record.

        A record that others may read is refused (``ValidationError`` naming ``state_dir``), as
        is a record that is not valid JSON.
        """
        path = self._record_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "r", encoding="utf-8") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise ValidationError(
                    "state_dir",
                    f"The state file {path.name} can be read by others (mode {mode:o}); "
                    "run `chmod 600` on it or delete it.",
                )
            try:
                return json.load(fh)
            except ValueError:
                raise ValidationError(
                    "state_dir", f"The state file {path.name} is not valid JSON; delete it."
                ) from None

    def delete_json(self, name: str) -> None:
        """Remove ``<name>.json`` if it exists."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            self._record_path(name).unlink()

    def forget(self, instance_id: str) -> None:
        """Remove everything kept for one instance: its pinned host key and its records."""
        validate_instance_id(instance_id)
        with self._lock:
            for what in ("", ".next", ".retired"):
                with contextlib.suppress(FileNotFoundError):
                    (self.root / HOST_KEYS_DIR / f"{instance_id}{what}.pub").unlink()
            for path in self.root.glob(f"{instance_id}*.json"):
                stem = path.name[: -len(".json")]
                if stem == instance_id or stem.startswith(instance_id + "."):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        # mkstemp creates the file 0600 whatever the umask; fchmod guards odd file systems.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
