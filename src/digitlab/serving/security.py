"""REST API keys: which keys are accepted at start-up, and one byte-exact, constant-time check per request."""

from __future__ import annotations

import hmac
import unicodedata
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from digitlab.core.errors import ConfigError
from digitlab.serving.errors import Unauthorized

__all__ = ["KeyCheck", "check_api_key", "key_dependencies"]

# Security schemes (stateless; module level so that FastAPI can resolve the endpoint annotations that name them)
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API key.")
BEARER = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


def check_api_key(key: str, source: str = "the API key") -> str:
    """`key` itself when a client can send it in a header; else ConfigError (one line, the key not shown).

    Header values lose leading and trailing blanks and cannot hold control characters, so a key with either
    could never match; any other character is fine (see `KeyCheck` for the bytes compared)."""
    if not key.strip():
        raise ConfigError(f"{source} is empty: give a key, or serve without one on purpose (--no-auth)")
    if key != key.strip(" \t"):
        raise ConfigError(f"{source} starts or ends with a blank, which HTTP headers drop: remove it")
    bad = sorted({f"U+{ord(c):04X}" for c in key if unicodedata.category(c).startswith("C")})
    if bad:
        raise ConfigError(f"{source} holds control characters ({', '.join(bad)}), which HTTP headers cannot carry")
    return key


class KeyCheck:
    """Whether a header value is the key. ASGI servers hand header bytes over decoded as Latin-1, so the value is
    turned back into its bytes and compared with the key's UTF-8 bytes (curl, httpx with bytes, most tools) and,
    where the key has one, its Latin-1 bytes (what browsers' fetch and Python's `requests` send for
    characters up to U+00FF). Both comparisons always run, each with hmac.compare_digest: the time taken does
    not depend on where the first wrong byte is."""

    def __init__(self, key: str) -> None:
        self._forms = [key.encode("utf-8")]
        try:
            latin1 = key.encode("latin-1")
        except UnicodeEncodeError:
            latin1 = self._forms[0]  # no Latin-1 form: compare against the UTF-8 one twice (same timing)
        self._forms.append(latin1)

    def matches(self, given: str | None) -> bool:
        if given is None:
            return False
        try:
            raw = given.encode("latin-1")  # the bytes on the wire (ASGI decodes header values as Latin-1)
        except UnicodeEncodeError:  # not from a header (a test client's str): its UTF-8 is what would be sent
            raw = given.encode("utf-8")
        results = [hmac.compare_digest(raw, form) for form in self._forms]
        return any(results)


def key_dependencies(key: str | None) -> list[Any]:
    """FastAPI `dependencies` that require `key` (X-API-Key or Authorization: Bearer); none without a key."""
    if key is None:
        return []
    check = KeyCheck(key)

    async def require_key(
        header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> None:
        if not check.matches(header if header is not None else (bearer.credentials if bearer else None)):
            raise Unauthorized("missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    return [Depends(require_key)]
