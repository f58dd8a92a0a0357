"""Worker loops that claim jobs from the queue and run the handler registered for each kind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fhirvault.jobs.queue import Job, JobQueue

log = logging.getLogger("fhirvault.jobs")

Handler = Callable[[Job], Awaitable[dict[str, Any] | None]]


class PermanentJobError(Exception):
    """The job cannot succeed by trying again (bad input, a refused address); it fails at once."""


class JobWorkers:
    """`count` loops in this process running jobs of the registered kinds until `stop()`.

    Idle loops poll the queue every `poll_seconds` and wake at once when this process enqueues.
    A running job's lease is renewed while it runs; on stop, a job still running after `grace_seconds`
    is cancelled and handed back to the queue for another worker.
    """

    def __init__(self, queue: JobQueue, handlers: dict[str, Handler], *, count: int = 1,
                 poll_seconds: float = 1.0, grace_seconds: float = 10.0) -> None:
        self.queue = queue
        self.handlers = handlers
        self.count = count
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        queue.on_enqueue(self._wake.set)

    def start(self) -> None:
        """Starts `count` worker tasks on the running event loop; each claims and runs jobs until `stop`."""
        for n in range(self.count):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"fhirvault-job-worker-{n}"))

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, then cancel the rest."""
        self._stopping.set()
        self._wake.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = await self.queue.claim(list(self.handlers))
            except Exception:
                log.exception("claiming a job failed; retrying in %ss", self.poll_seconds)
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                continue
            try:
                await self.run_one(job)
            except Exception:
                # Recording the outcome failed (database gone?); the lease runs out and the job is retried.
                log.exception("job %s (%s): recording its outcome failed", job.id, job.kind)

    async def run_one(self, job: Job) -> None:
        """Run one claimed job to its end state, renewing its lease meanwhile."""
        renewing = asyncio.create_task(self._renew(job))
        try:
            result = await self.handlers[job.kind](job)
        except asyncio.CancelledError:
            await asyncio.shield(self.queue.release(job))
            raise
        except PermanentJobError as exc:
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc)
            await self.queue.fail(job, str(exc))
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, message)
            await self.queue.retry(job, message)
        else:
            await self.queue.complete(job, result)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.queue.lease_seconds / 3))
            try:
                if not await self.queue.extend_lease(job):
                    log.warning("job %s: the claim was lost (lease expired and taken over)", job.id)
                    return
            except Exception:
                log.exception("renewing the lease of job %s failed", job.id)
