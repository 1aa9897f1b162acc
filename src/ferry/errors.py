"""Ferry's error types: raise them anywhere; ``serving.dataplane.report`` and one JSON shape answer them.

Every error carries an HTTP status (gRPC maps it: ``ferry.grpc.codec.STATUS_CODES``) and a stable code.

FerryError (500, internal)
├── ClientError (400, bad_request)                 the request is at fault; never logged
│   ├── InvalidInput (400, invalid_input)          does not fit the schema; ``field`` says where
│   ├── MalformedRequest (400, malformed_json)     not valid JSON (or not valid gzip/deflate) at all
│   ├── MethodNotAllowed (405, http_405)           with ``Allow``
│   ├── RequestTimeout (408, request_timeout)      the body did not arrive in time
│   ├── PayloadTooLarge (413, payload_too_large)   past the body limit, sent or decompressed
│   └── UnsupportedEncoding (415, unsupported_encoding)
├── Unauthorized (401, unauthorized)               with ``WWW-Authenticate``
├── NotFound (404, not_found)
│   └── ModelNotFound (404, model_not_found)
├── ClientClosed (499, client_closed)              expected: counted, never answered
├── NotImplementedYet (501, not_implemented)       expected: e.g. ``:explain`` without an explainer
│   └── ExplanationUnavailable                     this model has none; ``explainable_models`` lists who has
├── ModelNotReady (503, model_not_ready)           expected: loading, failed, draining
├── Overloaded (503, overloaded)                   expected: the queue is full; ``Retry-After``
├── DeadlineExceeded (504, deadline_exceeded)      expected: not served within its deadline
├── UpstreamError (status of the failure)          ``ferry gateway``: an upstream failed or timed out
├── InternalError (500, internal)                  anything unexpected; details only in the log
├── ModelError (500, model_error)                  the model raised while predicting
├── ModelWarmupFailed (500, warmup_failed)         the sample input failed at load: FAILED
├── BundleError (bundle_error)                     load-time; never a client's fault
│   ├── ManifestError (manifest_invalid)           ferry.yaml is missing or invalid
│   ├── IntegrityError (integrity_error)           an artifact's SHA-256 does not match the manifest
│   ├── UntrustedPickle (untrusted_pickle)         a pickle artifact without --trust-pickle / --trust-code
│   └── UntrustedCode (untrusted_code)             a Python class bundle without --trust-code
├── DeployError (deploy_error)
│   ├── FetchError, ToolError, SpecError
├── AuthMisconfigured (auth_misconfigured)         tokens asked for but unreadable: no start-up
├── PortInUse (port_in_use)                        a port taken or shared: no start-up
├── RoutesError (routes_invalid)                   the routes file, refused at start-up
├── TracingError (tracing)                         a --tracing value that cannot work
├── MonitorError (monitor_error)
├── LoadTestError (loadtest_error)                 a load test or contract check cannot start
│   └── LoadTestUsage (usage)                      ... because of a bad option: the CLI exits 2
└── UsageError (usage)                             a command-line argument or option that cannot work: CLI exit 2

FerryWarning (a UserWarning): something that works here and may not where it is served, e.g. a class opening
a relative path at build (``ferry.bundle.classfiles``); the CLI prints it as one ``warning:`` line.
"""

from __future__ import annotations

from typing import Any


class FerryError(Exception):
    """Base error: carries an HTTP status and a stable machine-readable code."""

    status: int = 500
    code: str = "internal"
    headers: dict[str, str] | None = None
    # A 5xx is logged with its cause, unless it is an expected, counted condition (shedding, deadlines).
    expected: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class FerryWarning(UserWarning):
    """A warning of Ferry's own, printed by the CLI as one line."""


class ClientError(FerryError):
    status = 400
    code = "bad_request"


class InvalidInput(ClientError):
    """The request does not match the model's input schema. ``field`` names where."""

    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None) -> None:
        full = f"{message} - at `{field}`" if field else message
        super().__init__(full)
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = super().to_dict()
        if self.field:
            body["field"] = self.field
        return body


class MalformedRequest(ClientError):
    code = "malformed_json"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(ClientError):
    status = 415
    code = "unsupported_encoding"


class MethodNotAllowed(ClientError):
    """A route that exists, asked with a method it does not answer; ``Allow`` lists those it does."""

    status = 405
    code = "http_405"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.headers = {"Allow": ", ".join(allowed)}


class NotFound(FerryError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelNotReady(FerryError):
    status = 503
    code = "model_not_ready"
    expected = True


class Unauthorized(FerryError):
    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012 - read-only class default


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class Overloaded(FerryError):
    """Rejected at admission: the model's queue is full. Retry after ``retry_after`` seconds."""

    status = 503
    code = "overloaded"
    expected = True

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class DeadlineExceeded(FerryError):
    status = 504
    code = "deadline_exceeded"
    expected = True


class NotImplementedYet(FerryError):
    """A standard route this model cannot answer, such as KServe's ``:explain`` without an explainer."""

    status = 501
    code = "not_implemented"
    expected = True


class ExplanationUnavailable(NotImplementedYet):
    """A 501 that says why this model has no explanation and which served models have one."""

    def __init__(self, message: str, explainable: list[str]) -> None:
        super().__init__(message)
        self.explainable = explainable

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "explainable_models": self.explainable}


class ClientClosed(FerryError):
    """The client went away (or its gRPC deadline passed) before the answer: counted, never answered."""

    status = 499  # nginx's code for it; gRPC's CANCELLED
    code = "client_closed"
    expected = True


class InternalError(FerryError):
    """Anything unexpected: a 500 whose details stay in the server's log."""


class ModelError(FerryError):
    """The model itself raised while predicting: a server-side failure, reported without internals."""

    code = "model_error"


class ModelWarmupFailed(FerryError):
    """The bundle's sample input failed at load: the version is FAILED and never takes traffic."""

    code = "warmup_failed"


class BundleError(FerryError):
    code = "bundle_error"


class ManifestError(BundleError):
    code = "manifest_invalid"


class IntegrityError(BundleError):
    code = "integrity_error"


class UntrustedPickle(BundleError):
    code = "untrusted_pickle"


class UntrustedCode(BundleError):
    code = "untrusted_code"


class DeployError(FerryError):
    code = "deploy_error"


class FetchError(DeployError):
    code = "fetch_error"


class ToolError(DeployError):
    code = "tool_error"


class SpecError(DeployError):
    code = "spec_error"


class UpstreamError(FerryError):
    """``ferry gateway``: a failure answered to the client as JSON with ``status``; never raised past the handler."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class AuthMisconfigured(FerryError):
    """Tokens were asked for but none can be read: the server refuses to start rather than run open."""

    code = "auth_misconfigured"


class PortInUse(FerryError):
    """A port another process holds, or two options share: start-up stops naming the option."""

    code = "port_in_use"


class RoutesError(FerryError):
    """The routes file is missing or invalid; refused at start-up."""

    code = "routes_invalid"


class TracingError(FerryError):
    """A ``--tracing`` value that cannot work; refused at start-up."""

    code = "tracing"


class MonitorError(FerryError):
    code = "monitor_error"


class LoadTestError(FerryError):
    """A load test or contract check cannot start: unreachable service, unknown model, bad option."""

    code = "loadtest_error"


class UsageError(FerryError):
    """A command-line argument or option that cannot work: the CLI exits 2 (any other FerryError exits 1)."""

    code = "usage"


class LoadTestUsage(LoadTestError, UsageError):
    """An option that cannot work (a bad duration, SLA or protocol): the CLI exits 2."""

    code = "usage"
