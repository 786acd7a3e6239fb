"""SSH key material: ed25519 key pairs generated locally, and files only their owner can read.

The private half of the user's key pair and of every instance's host key is made on this
machine; only public halves (and, for the host key, the user-data of the one instance that uses
it) leave it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ValidationError


@dataclass(frozen=True)
class KeyMaterial:
    """An ed25519 key pair: the private half as OpenSSH PEM text, the public half as one line."""

    private_openssh: str
    public_openssh: str

    @property
    def fingerprint(self) -> str:
        """The OpenSSH-style SHA256 fingerprint of the public half."""
        return fingerprint_sha256(self.public_openssh)

    def pkey(self) -> paramiko.PKey:
        """The private half as a paramiko key."""
        return pkey_from_text(self.private_openssh)


def generate_ed25519(comment: str = "jupyter-ec2") -> KeyMaterial:
    """Generate a new ed25519 key pair in memory."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyMaterial(private, f"{public} {comment}".strip())


def pkey_from_text(private_openssh: str) -> paramiko.PKey:
    """Load an OpenSSH ed25519 private key from text."""
    import io

    return paramiko.Ed25519Key.from_private_key(io.StringIO(private_openssh))


def public_key_blob(public_openssh: str) -> tuple[str, bytes]:
    """Split ``ssh-ed25519 AAAA… comment`` into its key type and decoded blob."""
    parts = public_openssh.split()
    if len(parts) < 2:
        raise ValidationError("public_key", "Not an OpenSSH public key line.")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValidationError("public_key", "Not an OpenSSH public key line.") from None


def fingerprint_sha256(public_openssh: str) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    _, blob = public_key_blob(public_openssh)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 in one step; never overwrite, never world-readable."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    # The umask can only remove bits, but be explicit in case the file system adds some.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode())


def check_private_file(path: Path) -> None:
    """Refuse a secret file that others may read or write, as OpenSSH does."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValidationError(
            "key_file",
            f"The private key file {path.name} can be read by others (mode {mode:o}); "
            f"run `chmod 600` on it or delete it so a new key is made.",
        )


def read_private_key(path: Path) -> KeyMaterial:
    """Load a private key written by :func:`write_private_file`, refusing loose permissions."""
    check_private_file(path)
    text = path.read_text()
    pkey = pkey_from_text(text)
    return KeyMaterial(text, f"{pkey.get_name()} {pkey.get_base64()} jupyter-ec2")
