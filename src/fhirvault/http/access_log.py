"""The access log: one line per answer, written without the per-record cost of the logging machinery.

uvicorn logs every answer through `logging.getLogger("uvicorn.access")`: a LogRecord, a caller lookup,
filters, a record copy in its formatter and a flush, which cost about a third of the CPU time of a small
answer such as `GET /metadata`. `AccessLog` stands in for that logger in the HTTP protocol
(`connection_limits.LimitedHttpProtocol`): it writes uvicorn's own line
(`INFO:     127.0.0.1:53412 - "GET /fhir/R4/metadata HTTP/1.1" 200 OK`) straight to the stream of the
logger's handler, flushed at once as before, with every query value redacted. A logging set-up without a
plain stream handler keeps the standard path (and its filters).

Why every value and not only credentials: a FHIR query carries patient data (`Patient?name=…`,
`identifier=…`, `birthdate=…`) as well as bearer credentials (`sig=`, `access_token=`), and a log is
read and kept by more people and for longer than the database. The parameter names stay, so a line
still tells which search was made (`GET /fhir/R4/Patient?name=REDACTED&_count=REDACTED`).
"""

from __future__ import annotations

import http
import logging
import re
from typing import Any, TextIO

# A query: from `?` to the first whitespace or `#` (a log argument may hold a URL inside other text). Quotes
# do not end it: `'` is left unescaped by JavaScript's encodeURIComponent (`name=O'Brien`), and a value
# that ended at one would leak the rest of itself.
_QUERY = re.compile(r"\?([^\s#]*)")


def _names_only(match: re.Match[str]) -> str:
    """`?a=1&b&c=2` -> `?a=REDACTED&REDACTED&c=REDACTED`: every value, and every part without `=` (a
    bare word is a value too), replaced; a `"` left in a name is escaped so that the log line's quoted
    request stays one field."""
    parts = []
    for part in match.group(1).split("&"):
        if not part:
            parts.append(part)
        elif "=" in part:
            parts.append(part.split("=", 1)[0].replace('"', "%22") + "=REDACTED")
        else:
            parts.append("REDACTED")
    return "?" + "&".join(parts)


def redact(text: str) -> str:
    """`text` (a request target, or any log argument) with every query value replaced by REDACTED:
    `/Patient?name=Smith&sig=x` -> `/Patient?name=REDACTED&sig=REDACTED`."""
    if "?" not in text:
        return text
    return _QUERY.sub(_names_only, text)


class RedactSignatures(logging.Filter):
    """Keeps query values (patient data, storage URL signatures, `access_token=`) out of log records
    that go through the logging machinery (see `redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redacts the record's string arguments in place; always keeps the record."""
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def _status_texts() -> dict[int, str]:
    out = {}
    for code in range(100, 600):
        try:
            out[code] = f"{code} {http.HTTPStatus(code).phrase}"
        except ValueError:
            out[code] = f"{code} "
    return out


STATUS_TEXT = _status_texts()


class AccessLog:
    """Duck-types the `info` method of uvicorn's access logger as its HTTP protocol calls it:
    `info(format, client address, method, path with query, HTTP version, status)`."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        handler = next((h for h in logger.handlers if type(h) is logging.StreamHandler), None)
        self._handler: logging.StreamHandler[TextIO] | None = handler
        if not any(isinstance(f, RedactSignatures) for f in logger.filters):
            logger.addFilter(RedactSignatures())

    def hasHandlers(self) -> bool:  # noqa: N802 - logging's name, asked by uvicorn
        """Whether the access logger has somewhere to write (uvicorn logs nothing otherwise)."""
        return self.logger.hasHandlers()

    def info(self, msg: str, *args: Any) -> None:
        """One access log line: `args` are uvicorn's (client "host:port", method, path with query, HTTP
        version, status code); written at once, or handed to the logger under another logging set-up."""
        handler = self._handler
        if handler is None or len(args) != 5 or not self.logger.isEnabledFor(logging.INFO):
            self.logger.info(msg, *args)  # someone else's logging set-up: its own formatting and filters
            return
        client, method, target, version, status = args
        line = f'INFO:     {client} - "{method} {redact(target)} HTTP/{version}" {STATUS_TEXT.get(status, status)}\n'
        with handler.lock or _NO_LOCK:
            try:
                handler.stream.write(line)
                handler.stream.flush()
            except (OSError, ValueError):  # a closed or full stream: the answer still goes out
                pass


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()
