"""serving's two error shapes, OpenAI's (``/v1/...``) and TGI's (``/generate...``), and the exception
handlers that answer every refusal in the shape of the route it came to: the engine's errors (each with
its status: ``ERROR_STATUS``), FastAPI's own (unparsable or invalid bodies, unknown routes) and a
control call without the bearer token (``Unauthorized``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine import AdapterExists, AdapterLoadError, EngineError, PromptTooLong, QueueFull, UnknownAdapter

# engine error -> (HTTP status, OpenAI error type)
ERROR_STATUS: dict[type[EngineError], tuple[int, str]] = {
    PromptTooLong: (400, "BadRequestError"),
    UnknownAdapter: (404, "NotFoundError"),
    AdapterExists: (409, "ConflictError"),
    AdapterLoadError: (400, "BadRequestError"),
    QueueFull: (429, "ServiceUnavailableError"),
}
RETRY_AFTER_SECONDS = "1"


def openai_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


def tgi_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)


def error_response(path: str, status: int, message: str, kind: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
    if path.startswith("/generate"):
        return tgi_error(status, message, "overloaded" if status == 429 else "validation", headers)
    return openai_error(status, message, kind, headers)


class Unauthorized(Exception):
    """A control call without the right bearer token (answered 401 by the handler below)."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (an unparsable body: not UTF-8, nested too deeply; unknown routes)
        # in the same error shapes as ours.
        message = {400: "Request body could not be parsed: it must be UTF-8 JSON of sane depth."}.get(
            exc.status_code, str(exc.detail))
        return error_response(request.url.path, exc.status_code, message, "BadRequestError"
                              if exc.status_code == 400 else "HTTPError")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request.url.path, 400, "Request body is not valid JSON.",
                                  "BadRequestError")
        reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return error_response(request.url.path, 422, reasons, "UnprocessableEntityError")

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        status, kind = ERROR_STATUS[type(exc)]
        return error_response(request.url.path, status, str(exc), kind)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return openai_error(401, "A valid bearer token is required for adapter control.",
                            "AuthenticationError", {"WWW-Authenticate": "Bearer"})
