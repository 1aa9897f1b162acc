"""Optional bearer-token / API-key authentication, checked in constant time, for HTTP and gRPC alike.

Applied to every route except the route table's public ones (``ferry.protocol.routes``: health,
readiness, metrics and the docs, all on prefixes no bundle may declare a route on), so that probes
and scrapers need no secret, and the few (method, path) pairs the dispatcher opens: the console's
``GET /`` and the bundles' accepted health routes (``ferry.http.dispatch.PredictRoutes.public``).
Tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Set
from pathlib import Path

from ferry.errors import AuthMisconfigured as AuthMisconfigured  # re-exported: raised here
from ferry.errors import Unauthorized
from ferry.protocol.routes import PUBLIC_PATHS, PUBLIC_PREFIXES

# The route table's public routes: the probes, metrics and the docs, whatever the method.
EXEMPT_PATHS, EXEMPT_PREFIXES = PUBLIC_PATHS, PUBLIC_PREFIXES

Public = Callable[[], Set[tuple[str, str]]]  # the (method, path) pairs open now; they change with the models


def _nothing_public() -> Set[tuple[str, str]]:
    return frozenset()


class TokenAuth:
    def __init__(self, tokens: Iterable[str], public: Public = _nothing_public) -> None:
        self.tokens = [t.encode() for t in tokens if t]
        self.public = public

    @classmethod
    def from_settings(cls, tokens: str, tokens_file: str, public: Public = _nothing_public) -> TokenAuth | None:
        """None when no token is asked for: authentication is off.

        Asking for tokens and giving none (``--auth-tokens ,``, an empty or comments-only file, a
        missing file) is an ``AuthMisconfigured`` error, never a server that starts with auth off.
        """
        found = [t.strip() for t in tokens.split(",") if t.strip()]
        if tokens.strip() and not found:
            raise AuthMisconfigured("--auth-tokens holds no token (only commas and spaces)")
        if tokens_file:
            try:
                lines = Path(tokens_file).read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise AuthMisconfigured(f"--auth-tokens-file {tokens_file}: {reason}") from None
            from_file = [t for t in (line.strip() for line in lines) if t and not t.startswith("#")]
            if not from_file:
                raise AuthMisconfigured(f"--auth-tokens-file {tokens_file} holds no token (empty or only comments)")
            found += from_file
        return cls(found, public) if found else None

    def requires(self, method: str, path: str) -> bool:
        """Whether ``method path`` needs a token: anything but the probes, the docs and what is public, exactly."""
        if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
            return False
        return (method, path) not in self.public()

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Raise ``Unauthorized`` unless ``Authorization: Bearer <token>`` or ``X-API-Key`` matches.

        ``headers`` are lower-case names with their values, as ASGI and gRPC metadata carry them.
        """
        presented = b""
        for key, value in headers:
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif key == b"x-api-key":
                presented = value.strip()
        # Compare against every token, so the time taken says nothing about which one was close.
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            raise Unauthorized("missing or invalid credentials: send Authorization: Bearer <token> or X-API-Key")
