"""Admin accounts, dashboard sessions and personal API tokens.

- Passwords are argon2id hashes (argon2-cffi); a login by an unknown e-mail still verifies a hash, so
  the answer takes as long either way.
- Sessions live in `admin_session`: the cookie carries a random token, the table its SHA-256. Logout
  revokes the row; every session ends at its absolute `expires_at`, however active it is.
- API tokens (`cpa_…`) are shown once; only their SHA-256 is kept (they are random, so a fast hash is
  enough). A token acts with its owner's role; removing the owner removes their sessions and tokens.
- ADMIN_TOKEN is the owner's break-glass credential: `Principal.break_glass()`.
- An e-mail is kept and compared in one form: lower case, an internationalised domain as A-labels
  (`xn--…`), which is what a browser's `<input type="email">` submits whatever was typed. The part before
  the @ must be ASCII: browsers refuse to submit any other from that field.
"""
from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import idna
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.database import is_unique_violation
from db.models import AdminAccount, AdminApiToken, AdminSession
from db.types import utcnow
from tasks.errors import NotFound, ValidationFailed

ROLES = ("viewer", "operator", "owner")  # each can do what the ones before it can
BREAK_GLASS_ACTOR = "ADMIN_TOKEN"
TOKEN_PREFIX = "cpa_"
MIN_PASSWORD_LENGTH = 12
DEFAULT_SESSION_HOURS = 8
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# UTS #46's four deviation characters, mapped as its transitional processing maps them, which is how
# Chromium's e-mail field converts a domain (ann@straße.test is submitted as ann@strasse.test); the idna
# package only processes non-transitionally.
_TRANSITIONAL = str.maketrans({"ß": "ss", "ς": "σ", "\u200c": None, "\u200d": None})

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the e-mail is unknown, so both answers cost one argon2 verification. Made on first
    use, not at import: every process imports this module, and a hash costs about a tenth of a second."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountExists(ValidationFailed):
    """Raised when an account with this e-mail already exists."""


@dataclass(frozen=True)
class Principal:
    """Who is acting: an admin (by e-mail) with a role, or the break-glass owner."""

    actor: str
    role: str
    admin_id: int | None = None

    @classmethod
    def break_glass(cls) -> "Principal":
        return cls(actor=BREAK_GLASS_ACTOR, role="owner")

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _ascii_domain(domain: str) -> str:
    """The (lower-case) domain as A-labels. A domain given as A-labels is read back first, so both spellings
    of one domain end the same. Raises idna.IDNAError for a domain IDNA refuses."""
    if domain.isascii() and not any(label.startswith("xn--") for label in domain.split(".")):
        return domain  # no IDNA question arises
    unicode = idna.decode(domain, uts46=True)
    return idna.encode(unicode.translate(_TRANSITIONAL), uts46=True).decode("ascii")


def canonical_email(email: str) -> str:
    """The address in the form accounts are kept and compared in (see the module's docstring). Raises
    idna.IDNAError for a domain IDNA refuses."""
    local, at, domain = email.strip().lower().rpartition("@")
    return f"{local}@{_ascii_domain(domain)}" if at else domain


def normalise_email(email: str) -> str:
    """A new account's address, canonical; refused if the dashboard's login form could never send it."""
    if not isinstance(email, str):
        raise ValidationFailed("email: a string", field="email")
    email = email.strip().lower()
    if not EMAIL.fullmatch(email) or len(email) > 320:
        raise ValidationFailed(f"email: {email!r} is not an e-mail address", field="email")
    if not email.rpartition("@")[0].isascii():
        raise ValidationFailed(f"email: {email!r} has a character beyond ASCII before the @, which a browser's "
                               "e-mail field will not send: that account could never log in to the dashboard",
                               field="email")
    try:
        canonical = canonical_email(email)
    except idna.IDNAError as exc:
        raise ValidationFailed(f"email: {email!r} has no valid domain ({exc})", field="email") from None
    if len(canonical) > 320:
        raise ValidationFailed(f"email: {email!r} is too long", field="email")
    return canonical


def check_role(role: str) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise ValidationFailed(f"role: must be one of {', '.join(ROLES)}", field="role")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"password: at least {MIN_PASSWORD_LENGTH} characters", field="password")
    return password


# --------------------------------------------------------------------------- accounts


def add_admin(*, session: Session, email: str, role: str, password: str) -> AdminAccount:
    email, role, password = normalise_email(email), check_role(role), check_password(password)
    if find_admin(session, email) is not None:
        raise AccountExists(f"email: an admin {email} already exists", field="email")
    account = AdminAccount(email=email, role=role, password_hash=_hasher.hash(password))
    session.add(account)
    try:
        session.flush()
    except IntegrityError as exc:  # the same address added at the same moment: the other request's won
        if not is_unique_violation(exc):
            raise
        raise AccountExists(f"email: an admin {email} already exists", field="email") from None
    return account


def find_admin(session: Session, email: str) -> AdminAccount | None:
    """The account of this address, however its domain is spelled (Unicode or A-labels), or None.

    An account whose address is stored with its domain in Unicode is found too, by comparing canonical
    forms: one look-up by the canonical address, then, if none, a pass over the accounts (a handful of
    people) for one stored in another form. An address with a NUL names no account (PostgreSQL refuses the
    character in text): it is not looked up."""
    if not isinstance(email, str) or "\x00" in email:
        return None
    try:
        wanted = canonical_email(email)
    except idna.IDNAError:  # a domain IDNA refuses: only an account stored with exactly that can match
        wanted = email.strip().lower()
    account = session.scalar(select(AdminAccount).where(AdminAccount.email == wanted))
    if account is None:
        # stored in another form: a Unicode domain, or A-labels the canonical form now spells otherwise (a domain
        # with ß, kept as `xn--strae-…` before, is `strasse` now)
        account = next((other for other in session.scalars(select(AdminAccount).order_by(AdminAccount.id))
                        if (not other.email.isascii() or "xn--" in other.email)
                        and (other.email == email.strip().lower() or _same_address(other.email, wanted))), None)
    return account


def _same_address(stored: str, wanted: str) -> bool:
    try:
        return canonical_email(stored) == wanted
    except idna.IDNAError:
        return False


def get_admin(session: Session, email: str) -> AdminAccount:
    account = find_admin(session, email)
    if account is None:
        raise NotFound(f"no admin {email}")
    return account


def list_admins(*, session: Session) -> list[AdminAccount]:
    return list(session.scalars(select(AdminAccount).order_by(AdminAccount.email)))


def remove_admin(*, session: Session, email: str) -> AdminAccount:
    """The account, its sessions and its tokens go; the audit log keeps what they did (by e-mail)."""
    account = get_admin(session, email)
    session.execute(delete(AdminSession).where(AdminSession.admin_id == account.id))
    session.execute(delete(AdminApiToken).where(AdminApiToken.admin_id == account.id))
    session.delete(account)
    session.flush()
    return account


def authenticate(*, session: Session, email: str, password: str) -> AdminAccount | None:
    """The account whose password this is, or None (unknown e-mail or wrong password: the same answer)."""
    account = find_admin(session, email or "")
    try:
        _hasher.verify(account.password_hash if account else _dummy_hash(), password or "")
    except (VerificationError, InvalidHashError):
        return None
    if account is None:
        return None
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = _hasher.hash(password)
    account.last_login_at = utcnow()
    return account


# --------------------------------------------------------------------------- sessions


def open_session(*, session: Session, principal: Principal, lifetime: timedelta,
                 credential_fingerprint: str | None = None, now: datetime | None = None) -> str:
    """A new dashboard session; returns the token for the cookie (only its hash is stored)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(AdminSession(token_hash=sha256(token), admin_id=principal.admin_id, role=principal.role,
                             credential_fingerprint=credential_fingerprint, created_at=now,
                             expires_at=now + lifetime))
    session.flush()
    return token


def session_principal(*, session: Session, token: str | None, break_glass_fingerprint: str | None,
                      now: datetime | None = None) -> Principal | None:
    """The principal of a live session: not revoked, not expired, its account (or ADMIN_TOKEN) unchanged."""
    if not token:
        return None
    now = now or utcnow()
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == sha256(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    if row.admin_id is None:  # break-glass: only while ADMIN_TOKEN is the one it was opened with
        if not break_glass_fingerprint or row.credential_fingerprint != break_glass_fingerprint:
            return None
        return Principal.break_glass()
    account = session.get(AdminAccount, row.admin_id)
    if account is None:
        return None
    return Principal(actor=account.email, role=account.role, admin_id=account.id)  # the role as it is now


def close_session(*, session: Session, token: str | None, now: datetime | None = None) -> bool:
    if not token:
        return False
    result = session.execute(update(AdminSession).where(AdminSession.token_hash == sha256(token),
                                                        AdminSession.revoked_at.is_(None))
                             .values(revoked_at=now or utcnow()))
    return bool(result.rowcount)


# --------------------------------------------------------------------------- API tokens


def create_token(*, session: Session, admin_id: int, name: str) -> tuple[AdminApiToken, str]:
    """A new personal API token; returns the row and the token itself (shown once, never stored)."""
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise ValidationFailed("name: 1 to 100 characters", field="name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AdminApiToken(admin_id=admin_id, name=name, token_hash=sha256(token), prefix=token[:10])
    session.add(row)
    session.flush()
    return row, token


def list_tokens(*, session: Session, admin_id: int) -> list[AdminApiToken]:
    return list(session.scalars(select(AdminApiToken).where(AdminApiToken.admin_id == admin_id)
                                .order_by(AdminApiToken.id)))


def revoke_token(*, session: Session, admin_id: int, token_id: int) -> tuple[AdminApiToken, bool]:
    """The token, and whether this call revoked it (False: it already was)."""
    row = session.get(AdminApiToken, token_id)
    if row is None or row.admin_id != admin_id:
        raise NotFound(f"no token {token_id} of yours")
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = utcnow()
    return row, True


def token_principal(*, session: Session, token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(AdminApiToken).where(AdminApiToken.token_hash == sha256(token)))
    if row is None or row.revoked_at is not None:
        return None
    account = session.get(AdminAccount, row.admin_id)
    if account is None:
        return None
    row.last_used_at = utcnow()
    return Principal(actor=account.email, role=account.role, admin_id=account.id)


def token_view(row: AdminApiToken) -> dict:
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "created_at": row.created_at.isoformat(),
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
            "revoked": row.revoked_at is not None}


def admin_view(account: AdminAccount) -> dict:
    return {"email": account.email, "role": account.role, "created_at": account.created_at.isoformat(),
            "last_login_at": account.last_login_at.isoformat() if account.last_login_at else None}
