"""The durable job queue: one table of jobs, claimed under a lease, retried with exponential backoff."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.store.database import Database
from fhirvault.store.job_rows import jobs

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)
ACTIVE = (PENDING, RUNNING)


@dataclass(frozen=True)
class Job:
    """One durable job row: `kind` names its handler, `subject` what it works on (e.g. "Binary/123"), `state`
    pending/running/done/failed, `attempts` counted per claim; times in microseconds since the epoch;
    `claim_token` identifies the current lease holder."""

    id: str
    kind: str
    subject: str | None
    payload: dict[str, Any]
    state: str
    attempts: int
    run_after: int
    lease_until: int | None
    claim_token: str | None
    last_error: str | None
    result: dict[str, Any] | None
    created_at: int
    updated_at: int

    def as_json(self) -> dict[str, Any]:
        """The job as the job status endpoint shows it (JSON-ready; times in microseconds, no claim token)."""
        return {"id": self.id, "kind": self.kind, "subject": self.subject, "payload": self.payload,
                "state": self.state, "attempts": self.attempts, "run_after_us": self.run_after,
                "error": self.last_error, "result": self.result,
                "created_us": self.created_at, "updated_us": self.updated_at}


def _job(row: Any) -> Job:
    return Job(
        id=row.id, kind=row.kind, subject=row.subject, payload=json.loads(row.payload), state=row.state,
        attempts=row.attempts, run_after=row.run_after, lease_until=row.lease_until,
        claim_token=row.claim_token, last_error=row.last_error,
        result=json.loads(row.result) if row.result else None,
        created_at=row.created_at, updated_at=row.updated_at,
    )


class JobQueue:
    """Jobs in the database, shared by every process on it.

    A claim moves one due job to `running` with a lease; the worker finishes it (`complete`), gives it
    back for a later attempt (`retry`, with exponential backoff) or ends it (`fail`). A worker that died
    leaves its lease to expire, and the job is claimed again (counting as an attempt). On PostgreSQL
    claims use FOR UPDATE SKIP LOCKED, so workers never wait on each other; on SQLite the write
    transaction is already single-writer (BEGIN IMMEDIATE), which gives the same exclusivity.
    """

    def __init__(self, db: Database, *, max_attempts: int = 5, backoff_seconds: float = 2.0,
                 lease_seconds: float = 60.0) -> None:
        self.db = db
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.lease_seconds = lease_seconds
        self._listeners: list[Callable[[], None]] = []
        self._policies: dict[str, tuple[int, float]] = {}

    def on_enqueue(self, callback: Callable[[], None]) -> None:
        """`callback()` runs after a job was queued by this process (wakes idle local workers)."""
        self._listeners.append(callback)

    def set_retry_policy(self, kind: str, *, max_attempts: int, backoff_seconds: float) -> None:
        """Jobs of `kind` get their own attempts and backoff base (seconds) instead of the queue's."""
        self._policies[kind] = (max(1, max_attempts), backoff_seconds)

    def _policy(self, kind: str) -> tuple[int, float]:
        return self._policies.get(kind, (self.max_attempts, self.backoff_seconds))

    def notify(self) -> None:
        """Wake this process's idle workers (after jobs were queued in a caller's transaction)."""
        for callback in self._listeners:
            callback()

    async def enqueue(self, kind: str, payload: dict[str, Any], *, subject: str | None = None,
                      dedupe_key: str | None = None, run_after_us: int | None = None) -> str:
        """Queue a job and return its id; with `dedupe_key`, an active job of the same kind and key is
        returned instead of queueing a second one."""
        async with self.db.write() as conn:
            job_id = await self.enqueue_in(conn, kind, payload, subject=subject, dedupe_key=dedupe_key,
                                           run_after_us=run_after_us)
        self.notify()
        return job_id

    async def enqueue_in(self, conn: AsyncConnection, kind: str, payload: dict[str, Any], *,
                         subject: str | None = None, dedupe_key: str | None = None,
                         run_after_us: int | None = None, dedupe_states: tuple[str, ...] = ACTIVE) -> str:
        """`enqueue` inside the caller's write transaction `conn`: the job exists exactly when that
        transaction commits. The caller calls `notify()` after the commit. `dedupe_states`: the states of a
        job with the same key that makes this one unneeded (`(PENDING,)` when a job already running may
        have passed the point where it would have seen what this one is queued for)."""
        ts = now_us()
        if dedupe_key is not None:
            existing = (await conn.execute(
                sa.select(jobs.c.id).where(jobs.c.kind == kind, jobs.c.dedupe_key == dedupe_key,
                                           jobs.c.state.in_(dedupe_states)).limit(1))).scalar()
            if existing is not None:
                return str(existing)
        job_id = str(uuid.uuid4())
        await conn.execute(sa.insert(jobs).values(
            id=job_id, kind=kind, subject=subject, dedupe_key=dedupe_key,
            payload=json.dumps(payload, separators=(",", ":")), state=PENDING, attempts=0,
            run_after=run_after_us if run_after_us is not None else ts, created_at=ts, updated_at=ts))
        return job_id

    async def claim(self, kinds: list[str] | None = None) -> Job | None:
        """Take the next due job (pending and due, or running with an expired lease) and mark it running."""
        while True:
            ts = now_us()
            due = sa.or_(
                sa.and_(jobs.c.state == PENDING, jobs.c.run_after <= ts),
                sa.and_(jobs.c.state == RUNNING, jobs.c.lease_until < ts),
            )
            if kinds is not None:
                due = sa.and_(due, jobs.c.kind.in_(kinds))
            # Idle polls only read: on SQLite a write transaction would take the database's one write lock.
            async with self.db.read() as conn:
                if (await conn.execute(sa.select(jobs.c.id).where(due).limit(1))).first() is None:
                    return None
            async with self.db.write() as conn:
                stmt = sa.select(jobs).where(due).order_by(jobs.c.run_after).limit(1)
                if not self.db.is_sqlite:
                    stmt = stmt.with_for_update(skip_locked=True)
                row = (await conn.execute(stmt)).first()
                if row is None:
                    return None
                if row.state == RUNNING and row.attempts >= self._policy(row.kind)[0]:
                    # Its last attempt died with its worker: no attempt is left.
                    await conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(
                        state=FAILED, lease_until=None, claim_token=None, updated_at=ts,
                        last_error=_clip(f"the worker running attempt {row.attempts} stopped without finishing"
                                         + (f"; earlier: {row.last_error}" if row.last_error else ""))))
                    continue
                token = str(uuid.uuid4())
                lease = ts + int(self.lease_seconds * 1_000_000)
                await conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(
                    state=RUNNING, attempts=row.attempts + 1, lease_until=lease, claim_token=token,
                    updated_at=ts))
                claimed = (await conn.execute(sa.select(jobs).where(jobs.c.id == row.id))).one()
                return _job(claimed)

    async def extend_lease(self, job: Job) -> bool:
        """Push the lease of a running job forward; False when the claim was lost (taken over)."""
        ts = now_us()
        async with self.db.write() as conn:
            result = await conn.execute(sa.update(jobs).where(*self._ours(job)).values(
                lease_until=ts + int(self.lease_seconds * 1_000_000), updated_at=ts))
        return bool(result.rowcount == 1)

    async def complete(self, job: Job, result: dict[str, Any] | None = None) -> bool:
        """Ends a job the caller still holds as done with `result`; False when the lease was lost meanwhile
        (another worker took the job over), and nothing changed."""
        return await self._finish(job, state=DONE, result=json.dumps(result) if result is not None else None)

    async def fail(self, job: Job, error: str) -> bool:
        """End the job as failed, keeping the error."""
        return await self._finish(job, state=FAILED, last_error=_clip(error))

    async def retry(self, job: Job, error: str) -> bool:
        """Give the job back for another attempt after a backoff, or fail it when no attempt is left."""
        max_attempts, backoff_seconds = self._policy(job.kind)
        if job.attempts >= max_attempts:
            return await self.fail(job, error)
        delay = backoff_seconds * (2 ** (job.attempts - 1))
        return await self._finish(job, state=PENDING, last_error=_clip(error),
                                  run_after=now_us() + int(delay * 1_000_000))

    async def release(self, job: Job) -> bool:
        """Hand back a job interrupted by shutdown: pending at once, the interrupted attempt not counted."""
        return await self._finish(job, state=PENDING, attempts=max(0, job.attempts - 1), run_after=now_us())

    async def _finish(self, job: Job, **values: Any) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(sa.update(jobs).where(*self._ours(job)).values(
                lease_until=None, claim_token=None, updated_at=now_us(), **values))
        return bool(result.rowcount == 1)

    @staticmethod
    def _ours(job: Job) -> list[Any]:
        # A worker whose lease expired and whose job was taken over must not finish it.
        return [jobs.c.id == job.id, jobs.c.state == RUNNING, jobs.c.claim_token == job.claim_token]

    async def get(self, job_id: str) -> Job | None:
        """The job with id `job_id`, or None."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
        return _job(row) if row else None

    async def list(self, *, state: str | None = None, subject: str | None = None, kind: str | None = None,
                   limit: int = 100) -> list[Job]:
        """Jobs, newest first."""
        stmt = sa.select(jobs)
        if state is not None:
            stmt = stmt.where(jobs.c.state == state)
        if subject is not None:
            stmt = stmt.where(jobs.c.subject == subject)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        async with self.db.read() as conn:
            return [_job(r) for r in (await conn.execute(stmt)).all()]

    async def counts(self) -> dict[str, int]:
        """How many jobs are in each state (for metrics)."""
        async with self.db.read() as conn:
            rows = (await conn.execute(
                sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state))).all()
        found = {str(state): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
