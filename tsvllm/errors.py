"""The small set of request errors tsvllm raises, and the one place they become HTTP.

Every per-request failure inside the handler is one of these (or is wrapped into
one), and :func:`error_body` turns it into the OpenAI error shape::

    {"error": {"message": "...", "type": "BadRequestError", "param": null, "code": 400}}

with, for some errors, a field more in ``error`` (:meth:`TsVllmError.details`): a content
filter's ``categories``, an unknown route's ``routes``.

The handler *returns* that body with the request's own status and headers
(:func:`error_headers`); it never raises out of ``handle()`` for a single request's
fault (TorchServe would fail every request in flight on the worker: docs/TORCHSERVE.md,
"A non-200 message code fails every request in flight").
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

ENGINE_START_FAILED = "engine_start_failed"


class TsVllmError(Exception):
    """Base class: a request failed with an HTTP status and an OpenAI error type."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    error_type: str = "InternalServerError"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        #: optional machine-readable code (e.g. ``content_filter``); defaults to the status
        self.code = code

    def response_headers(self) -> dict[str, str]:
        """Headers the reply carries besides the body (e.g. ``Retry-After``)."""
        return {}

    def details(self) -> dict[str, Any]:
        """Fields the body's ``error`` object carries besides OpenAI's four (e.g. a filter's
        ``categories``, a 404's ``routes``)."""
        return {}


class BadRequest(TsVllmError):
    """The request is malformed or violates the schema (400)."""

    status = HTTPStatus.BAD_REQUEST
    error_type = "BadRequestError"


class ContentFiltered(BadRequest):
    """A guard refused the request (400, code ``content_filter``, with the categories)."""

    def __init__(self, message: str, *, categories: tuple[str, ...] | list[str] = ()):
        super().__init__(message, code="content_filter")
        self.categories = list(categories)

    def details(self) -> dict[str, Any]:
        return {"categories": self.categories}


class Unauthorized(TsVllmError):
    """No API key, or a wrong one (401, code ``invalid_api_key``, as OpenAI answers)."""

    status = HTTPStatus.UNAUTHORIZED
    error_type = "AuthenticationError"

    def __init__(self, message: str):
        super().__init__(message, code="invalid_api_key")


class NotFound(TsVllmError):
    """Unknown route or unknown model (404). For an unknown route, ``routes`` lists what is
    served instead (the body's ``error.routes``, e.g. ``["/v1/models", "/v1/embeddings"]``)."""

    status = HTTPStatus.NOT_FOUND
    error_type = "NotFoundError"

    def __init__(self, message: str, *, param: str | None = None, routes: list[str] | None = None):
        super().__init__(message, param=param)
        self.routes = routes

    def details(self) -> dict[str, Any]:
        return {} if self.routes is None else {"routes": list(self.routes)}


class MethodNotAllowed(TsVllmError):
    """The route exists but not for this HTTP method (405)."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    error_type = "MethodNotAllowedError"


class PayloadTooLarge(TsVllmError):
    """The body is larger than the configured limit (413)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    error_type = "PayloadTooLargeError"


class EngineUnavailable(TsVllmError):
    """The engine is dead, not ready, or the server is draining; retry later (503, with a
    ``Retry-After`` header when ``retry_after_s`` is set)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "ServiceUnavailableError"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None):
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def response_headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


class EngineStartFailed(TsVllmError):
    """The engine cannot start with this configuration, and no retry would fix it (500,
    code ``engine_start_failed``): fix the model config and register the model again."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    error_type = "EngineStartError"

    def __init__(self, reason: str):
        super().__init__(f"the engine cannot start: {reason}", code=ENGINE_START_FAILED)


class HookFailed(TsVllmError):
    """A hook raised something that is not a tsvllm error (500): a bug in the handler. The
    message names the hook; the worker log has the traceback."""

    def __init__(self, hook: str, exc: BaseException):
        super().__init__(f"internal error ({type(exc).__name__}) in {hook}; see the worker log")
        self.hook = hook


class RequestTimeout(TsVllmError):
    """The request ran past ``handler.request_timeout_s``; its generation was aborted (504)."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    error_type = "TimeoutError"


#: nginx's status for a request whose client closed the connection first (not in HTTPStatus)
CLIENT_CLOSED_REQUEST = 499


class ClientGone(TsVllmError):
    """The client closed its connection before the reply; the generation was stopped
    (499, which nobody receives: it is for the logs, the audit line and the metrics)."""

    status = CLIENT_CLOSED_REQUEST  # type: ignore[assignment]
    error_type = "ClientClosedRequest"


#: the OpenAI error ``type`` of each 4xx status a hook may answer with (the names of the
#: ``openai`` client's exceptions), when :class:`ClientError` is given none
CLIENT_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
#: headers a :class:`ClientError` may not set: TorchServe frames the reply with them
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "connection"})


class ClientError(TsVllmError):
    """Refuse a request with a 4xx status of your choice: what a hook raises for auth,
    permission or quota (401, 403, 404, 409, 413, 422, 429, ...).

    The client gets ``status``, the OpenAI error body with ``error_type`` (by default the
    ``openai`` client's name for the status, e.g. ``RateLimitError`` for 429) and ``code``
    (by default the status), and ``headers``, e.g. ``{"Retry-After": "30"}`` or
    ``{"WWW-Authenticate": 'Bearer realm="tsvllm"'}``. Only the request that raised it
    fails; the others in flight go on::

        raise ClientError(429, "team quota used up", code="rate_limit_exceeded",
                          headers={"Retry-After": "30"})

    A status outside 400-499, or a framing header (Content-Type, Content-Length,
    Transfer-Encoding, Connection), is a ValueError: a bug in the hook, answered 500.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError(f"ClientError takes a 4xx status, not {status!r}")
        framing = sorted(k for k in headers or {} if k.lower() in _FRAMING_HEADERS)
        if framing:
            raise ValueError(f"ClientError cannot set {', '.join(framing)}: TorchServe sets them")
        super().__init__(message, param=param, code=code)
        self.status = HTTPStatus(status)
        self.error_type = error_type or CLIENT_ERROR_TYPES.get(status, _type_name(self.status))
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}

    def response_headers(self) -> dict[str, str]:
        return dict(self.headers)


def _type_name(status: HTTPStatus) -> str:
    """``ImATeapotError`` for 418: the status phrase as an error class name."""
    words = status.phrase.replace("-", " ").replace("'", "").split()
    return "".join(w[:1].upper() + w[1:] for w in words) + "Error"


def error_body(
    message: str,
    *,
    status: int,
    error_type: str,
    param: str | None = None,
    code: str | int | None = None,
) -> dict[str, Any]:
    """Return the OpenAI error body. ``code`` defaults to the numeric status, as vLLM does."""
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": status if code is None else code,
        }
    }


def to_error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map any exception to ``(status, OpenAI error body)``.

    ``TsVllmError`` keeps its own status; anything else is a 500 whose message is the
    exception's class name only (internal details stay in the worker log).
    """
    if isinstance(exc, TsVllmError):
        body = error_body(
            exc.message,
            status=int(exc.status),
            error_type=exc.error_type,
            param=exc.param,
            code=exc.code,
        )
        body["error"].update(exc.details())
        return int(exc.status), body
    status = int(HTTPStatus.INTERNAL_SERVER_ERROR)
    return status, error_body(
        f"internal error ({type(exc).__name__}); see the worker log",
        status=status,
        error_type="InternalServerError",
    )


def error_headers(exc: BaseException) -> dict[str, str]:
    """The response headers that go with :func:`to_error_body`'s reply for ``exc``."""
    return exc.response_headers() if isinstance(exc, TsVllmError) else {}


_BY_STATUS: dict[int, type[TsVllmError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        EngineUnavailable,
        RequestTimeout,
    )
}


def error_for_status(
    status: int, message: str, *, error_type: str | None = None, param: str | None = None
) -> TsVllmError:
    """The exception for an HTTP status reported by the engine (e.g. vLLM's ErrorResponse)."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        exc = cls(message, param=param)
    else:
        exc = TsVllmError(message, param=param)
        exc.status = HTTPStatus(status)
    if error_type:
        exc.error_type = error_type
    return exc
