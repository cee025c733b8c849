"""User identity negotiation, acceptor side (PS3.7 §D.3.3.7), and a users file.

The users file holds one user a line, `name:scrypt$n$r$p$salt$hash` (base64), or
`name:` for a user who may identify by name alone (type 1). Passwords are never
stored, only their scrypt hashes; `dimse users add` writes the lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Protocol

from dimse.pdu import UserIdentityRQ, UserIdentityType

_N, _R, _P = 1 << 14, 8, 1


class IdentityVerifier(Protocol):
    """Decides whether a requestor's user identity (PS3.7 D.3.3.7.1) is accepted."""

    def verify(self, identity: UserIdentityRQ) -> bool: ...


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    encode = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${encode(salt).decode()}${encode(digest).decode()}"


def check_password(password: bytes, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:  # a malformed line never matches
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


class UsersFile:
    """Users and their password hashes, read from a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.users: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, colon, stored = line.partition(":")
            if not colon or not name:
                raise ValueError(f"{self.path}:{number}: expected 'name:hash'")
            self.users[name] = stored.strip()

    def verify(self, identity: UserIdentityRQ) -> bool:
        name = identity.primary.decode("utf-8", "replace")
        stored = self.users.get(name)
        if stored is None:
            return False
        if identity.type is UserIdentityType.USERNAME:
            return stored == ""  # a user with a password must give it
        if identity.type is UserIdentityType.USERNAME_AND_PASSCODE:
            return stored != "" and check_password(identity.secondary, stored)
        return False  # Kerberos, SAML, JWT: not verified here


def add_user(path: Path, name: str, password: str | None) -> None:
    """Add or replace a user in a users file (created with owner-only permissions)."""
    if not name or ":" in name or "\n" in name:
        raise ValueError(f"not a user name: {name!r}")
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if line.partition(":")[0] != name]
    lines.append(f"{name}:{hash_password(password) if password else ''}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
