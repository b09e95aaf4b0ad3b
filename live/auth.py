"""Join tokens (HS256 JWTs, LiveKit-style grants) and admin API credentials."""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any

import jwt

from rooms.identity import ROOM_ID_RE, USER_ID_RE, Grants, Identity, Role

AUDIENCE = "live-classroom"
ALGORITHM = "HS256"
LEEWAY_S = 5
DEFAULT_TTL_S = 6 * 3600
MAX_TTL_S = 7 * 86_400


class TokenError(Exception):
    """The token cannot be trusted; ``str(error)`` says why, safe to show the client."""


def mint_token(
    secret: str,
    *,
    room_id: str,
    user_id: str,
    name: str,
    role: Role,
    grants: Grants | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    minor: bool = False,
    member: bool = False,
    now: float | None = None,
) -> str:
    """Sign a join token for one user in one room."""
    if not ROOM_ID_RE.match(room_id):
        raise ValueError("room id must be 3-64 characters of a-z, 0-9 and '-'")
    if not USER_ID_RE.match(user_id):
        raise ValueError("user id must be 1-64 characters of A-Z a-z 0-9 _ . : @ -")
    if not 1 <= len(name.strip()) <= 64:
        raise ValueError("name must be 1-64 characters")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL_S} seconds")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "name": name.strip(),
        "room": room_id,
        "role": role.value,
        "grants": (grants or Grants.for_role(role)).to_dict(),
        "aud": AUDIENCE,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    if minor:
        claims["minor"] = True
    if member:
        claims["member"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: object) -> Identity:
    """Check signature, algorithm, audience and expiry; return who the token speaks for."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise TokenError("missing token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "room", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token not yet valid") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    user_id, room_id, name = claims.get("sub"), claims.get("room"), claims.get("name", claims.get("sub"))
    if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
        raise TokenError("invalid token: bad sub")
    if not isinstance(room_id, str) or not ROOM_ID_RE.match(room_id):
        raise TokenError("invalid token: bad room")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise TokenError("invalid token: bad name")
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise TokenError("invalid token: bad role") from None
    return Identity(
        user_id=user_id,
        name=name,
        room_id=room_id,
        role=role,
        grants=Grants.from_claim(claims.get("grants")),
        minor=claims.get("minor") is True,
        is_member=claims.get("member") is True,
    )


def check_basic_auth(header: str | None, api_key: str, api_secret: str) -> bool:
    """Constant-time check of ``Authorization: Basic base64(key:secret)``."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    key, sep, secret = decoded.partition(":")
    ok_key = hmac.compare_digest(key.encode(), api_key.encode())
    ok_secret = hmac.compare_digest(secret.encode(), api_secret.encode())
    return bool(sep) and ok_key and ok_secret
