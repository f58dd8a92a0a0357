"""The answer to an unexpected fault (a bug, a lost database connection): a 500 OperationOutcome on a
connection that stays usable, and one log record with the traceback.

Starlette's outermost ServerErrorMiddleware answers such a fault through the application's handler and
then raises it again for the server to log; uvicorn logs it a second time and, as the answer has been
sent, closes the connection, so a keep-alive client that had read only part of the answer (or sent its
next request) saw the connection reset instead of the 500. `UnexpectedErrors` sits just inside it and
answers the fault itself. A fault after the answer has started (a broken stream) is raised on: the
connection must then be closed, since the client cannot tell a cut body from a whole one otherwise.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirvault.http.responses import outcome_response

log = logging.getLogger("fhirvault")


class UnexpectedErrors:
    """ASGI middleware: an exception no handler turned into an answer becomes a 500 OperationOutcome
    ("the error was logged"; nothing of the exception goes to the client), logged once with its traceback
    and the request's method and path (not its query, which carries patient data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Runs the application; see the class."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            response = outcome_response(500, "The server failed to process the request; the error was logged",
                                        "exception")
            await response(scope, receive, send)
