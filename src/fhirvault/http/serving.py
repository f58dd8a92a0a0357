"""Running the ASGI app under uvicorn, with a graceful SIGTERM that ends in exit status 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, except that after a SIGTERM or SIGINT it returns normally instead of raising the
    signal again, so that an orchestrator sees a clean exit (status 0). What happens on the signal is
    uvicorn's: the listening socket closes (no new connections), in-flight requests get
    `timeout_graceful_shutdown` seconds, then the application's shutdown runs (job leases handed back)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """While serving in the main thread, SIGINT and SIGTERM start the graceful shutdown instead of uvicorn
        re-raising them, and the original handlers come back afterwards; elsewhere nothing is
        captured."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

