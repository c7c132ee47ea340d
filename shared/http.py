"""HTTP conventions: every error is `application/problem+json` (RFC 9457), 4xx for bad input
with a clear title and detail, 5xx without internals. Bodies above a limit get 413; a
dependency that does not answer gets 503 with Retry-After; a 500 is a bug."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.access import Scope as CallerScope
from shared.access import scopes_of
from shared.events.envelope import NO_CONTROL_CHARACTERS, ORGANISATION_ID_PATTERN
from shared.failures import FAILURE_TYPES, Failure, classify
from shared.logging import get_logger
from shared.problems import Problem
from shared.settings import ServiceSettings

log = get_logger("shared.http")

OrganisationPath = Annotated[
    str,
    Path(
        max_length=68,
        pattern=ORGANISATION_ID_PATTERN,
        description="`org_` and 1–64 letters, digits, _ or -",
    ),
]

IdentifierPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=NO_CONTROL_CHARACTERS,
        description="1–128 characters, none of them a control character",
    ),
]
"""A member's, agent's or message's id in a path (as `Identifier` in events)."""

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://billing.example/problems/"


def problem_response(
    status: int, slug: str, title: str, detail: str = "", instance: str = "", **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {PROBLEM_JSON: {}}}
    for code, text in (
        (400, "Invalid request"),
        (401, "Missing or invalid bearer token"),
        (403, "The credential or the acting member may not do this"),
        (404, "Not found"),
        (413, "Body too large"),
        (503, "Temporarily unavailable; retry after the Retry-After header"),
    )
}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        response = problem_response(
            exc.status, exc.slug, exc.title, exc.detail, request.url.path, **exc.extra
        )
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors()
        ]
        return problem_response(
            400,
            "invalid-request",
            "Invalid request",
            "The request did not validate.",
            request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized"}.get(
            exc.status_code, "http-error"
        )
        return problem_response(exc.status_code, slug, str(exc.detail), "", request.url.path)

    async def _classified(request: Request, exc: Exception) -> JSONResponse:
        failure = classify(exc)
        if failure is Failure.TRANSIENT:
            log.warning("dependency unavailable", path=request.url.path, error=repr(exc))
            response = problem_response(
                503,
                "unavailable",
                "Temporarily unavailable",
                "A dependency (database or broker) did not answer; try again.",
                request.url.path,
            )
            response.headers["Retry-After"] = "1"
            return response
        if failure is Failure.POISON:
            log.error("input refused by the database", path=request.url.path, error=repr(exc))
            return problem_response(
                400,
                "refused-input",
                "Input refused",
                "A value of this request could not be stored.",
                request.url.path,
            )
        log.error("unhandled error", path=request.url.path, error=repr(exc), exc_info=exc)
        return problem_response(500, "internal-error", "Internal error", "", request.url.path)

    # Registered per class (not for `Exception`, whose handler Starlette runs and then
    # re-raises as a server error): what `classify` can tell apart.
    for kind in FAILURE_TYPES:
        app.add_exception_handler(kind, _classified)  # type: ignore[arg-type]

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return problem_response(500, "internal-error", "Internal error", "", request.url.path)


class BodySizeLimit:
    """Refuses request bodies above `max_bytes` with 413, whether announced or streamed.

    The body is read here, up to the limit, before the route runs: a route's own body parsing
    would turn any error while reading into a 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "body-too-large",
            "Request body too large",
            f"The limit is {self.max_bytes} bytes.",
            scope.get("path", ""),
        )
        await response(scope, receive, send)


def _replay(messages: list[dict[str, Any]], then: Receive | None = None) -> Receive:
    """A `receive` that hands out `messages`, then defers to `then` (e.g. for a disconnect)."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class Delegate(Exception):
    """Raised by a `HotRoute`'s answer: the framework's route answers this request instead."""


@dataclass(frozen=True, slots=True)
class HotRequest:
    state: Any
    """The application's state: `settings`, `parts`."""
    path: dict[str, str]
    query: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    body: Any
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class HotRoute:
    """A route answered in front of the framework, for a path called at high rates on another
    system's request path (the chat gateway's authorization, the invite flow's seat check).
    Only the plain case is answered here: a token holding one of `scopes`, a path that matches
    `path` (a regex with named groups), a body within the size limit, and input that `answer`
    accepts. Anything else (no token or another scope, malformed input: `answer` raises
    `Delegate`; an unexpected error) goes on, body included, to the framework's route of the
    same path, which answers it the usual way and documents it. `answer` returns the JSON body
    (or an `Answer` with headers), or raises `Problem`."""

    path: re.Pattern[str]
    answer: Callable[[HotRequest], Awaitable[Any]]
    scopes: frozenset[CallerScope]
    method: str = "GET"


class HotRoutes:
    """ASGI middleware serving `HotRoute`s (see there)."""

    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                if route.method != scope["method"]:
                    continue
                match = route.path.match(scope["path"])
                if match is None:
                    continue
                body = b""
                if route.method != "GET":
                    read = await self._body(scope, receive)
                    if read is None:
                        break
                    body = read
                    receive = _replay(
                        [{"type": "http.request", "body": body, "more_body": False}],
                        then=receive,
                    )
                if await self._answer(route, match, scope, send, body):
                    return
                break
        await self.app(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body if it announced a length within the limit; None to leave it unread."""
        limit = scope["app"].state.settings.max_request_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is None or not length.isdigit() or int(length) > limit:
            return None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(
        self, route: HotRoute, match: re.Match[str], scope: Scope, send: Send, body: bytes
    ) -> bool:
        state = scope["app"].state
        settings: ServiceSettings = state.settings
        token = _bearer_token(scope)
        if token is None or not scopes_of(settings.credentials, token) & route.scopes:
            return False
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        try:
            answered = await route.answer(HotRequest(state, match.groupdict(), query, body))
        except Problem as exc:
            payload: dict[str, Any] = {
                "type": PROBLEM_BASE + exc.slug,
                "title": exc.title,
                "status": exc.status,
                "instance": scope["path"],
                **({"detail": exc.detail} if exc.detail else {}),
                **exc.extra,
            }
            await _send(send, exc.status, PROBLEM_JSON, orjson.dumps(payload), exc.headers)
            return True
        except Exception:
            return False
        if isinstance(answered, Answer):
            await _send(
                send, 200, "application/json", orjson.dumps(answered.body), answered.headers
            )
        else:
            await _send(send, 200, "application/json", orjson.dumps(answered))
        return True


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def _send(
    send: Send, status: int, media_type: str, body: bytes, headers: dict[str, str] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
