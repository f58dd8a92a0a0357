"""The durable job queue and its worker loops, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirvault.clock import now_us
from fhirvault.jobs.queue import DONE, FAILED, PENDING, RUNNING, Job, JobQueue
from fhirvault.jobs.worker import JobWorkers, PermanentJobError
from fhirvault.store.database import Database
from tests.conftest import require_postgres
from tests.support.server import postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    else:
        require_postgres()
        with postgres_database() as url:
            yield url


def run(db_url: str, scenario: Any, **queue_args: Any) -> Any:
    async def main() -> Any:
        db = Database(db_url)
        await db.migrate()
        try:
            return await scenario(JobQueue(db, **queue_args))
        finally:
            await db.close()
    return asyncio.run(main())


def test_enqueue_claim_complete_and_dedupe(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        first = await q.enqueue("ingest", {"url": "a"}, subject="Media/1", dedupe_key="Media/1 a")
        assert await q.enqueue("ingest", {"url": "a"}, subject="Media/1", dedupe_key="Media/1 a") == first
        other = await q.enqueue("ingest", {"url": "b"}, subject="Media/1", dedupe_key="Media/1 b")
        later = await q.enqueue("ingest", {"url": "c"}, run_after_us=now_us() + 3_600_000_000)
        assert await q.claim(["other-kind"]) is None
        job = await q.claim(["ingest"])
        assert job is not None and job.id == first and job.state == RUNNING and job.attempts == 1
        assert job.payload == {"url": "a"}
        assert await q.complete(job, {"binary": "Binary/1"})
        done = await q.get(first)
        assert done is not None and done.state == DONE and done.result == {"binary": "Binary/1"}
        # Done jobs no longer block a new job with the same key.
        assert await q.enqueue("ingest", {"url": "a"}, dedupe_key="Media/1 a") != first
        second = await q.claim()
        assert second is not None and second.id == other
        third = await q.claim()
        assert third is not None and third.payload == {"url": "a"}
        assert await q.claim() is None  # `later` is not due
        assert [j.id for j in await q.list(subject="Media/1")] and (await q.get(later)).state == PENDING  # type: ignore[union-attr]
        assert (await q.counts()) == {PENDING: 1, RUNNING: 2, DONE: 1, FAILED: 0}

    run(db_url, scenario)


def test_retry_backs_off_exponentially_then_fails_keeping_the_error(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        job_id = await q.enqueue("ingest", {})
        delays = []
        for attempt in (1, 2, 3):
            job = await q.claim()
            assert job is not None and job.attempts == attempt
            before = now_us()
            assert await q.retry(job, f"HTTP 500 on attempt {attempt}")
            after = now_us()
            stored = await q.get(job_id)
            assert stored is not None
            if attempt < 3:
                assert stored.state == PENDING and stored.last_error == f"HTTP 500 on attempt {attempt}"
                delay = 10 * 2 ** (attempt - 1) * 1_000_000
                assert before + delay <= stored.run_after <= after + delay
                delays.append(stored.run_after)
                await _make_due(q, job_id)
            else:
                assert stored.state == FAILED and stored.last_error == "HTTP 500 on attempt 3"
        assert await q.claim() is None

    run(db_url, scenario, max_attempts=3, backoff_seconds=10)


async def _make_due(q: JobQueue, job_id: str) -> None:
    """Skip the backoff wait (the test checks the schedule, not the clock)."""
    import sqlalchemy as sa

    from fhirvault.jobs.queue import jobs
    async with q.db.write() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(run_after=0))


def test_permanent_failure_and_lost_claims(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        job_id = await q.enqueue("ingest", {})
        job = await q.claim()
        assert job is not None
        # A lease of -1s is expired at once: another worker takes the job over, as after a crash.
        taken = await q.claim()
        assert taken is not None and taken.id == job_id and taken.attempts == 2
        assert not await q.complete(job)  # the first worker lost its claim and cannot finish the job
        assert not await q.extend_lease(job)
        assert await q.fail(taken, "refused: 10.0.0.1 is a private address")
        stored = await q.get(job_id)
        assert stored is not None and stored.state == FAILED and "private" in (stored.last_error or "")

    run(db_url, scenario, lease_seconds=-1)


def test_job_of_a_crashed_worker_is_failed_when_no_attempt_is_left(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        job_id = await q.enqueue("ingest", {})
        assert await q.claim() is not None
        assert await q.claim() is not None   # attempt 2 (takes over the expired lease)
        assert await q.claim() is None       # attempt 2's lease expired too, and 2 is the maximum
        stored = await q.get(job_id)
        assert stored is not None and stored.state == FAILED and "stopped without finishing" in str(stored.last_error)

    run(db_url, scenario, lease_seconds=-1, max_attempts=2)


def test_concurrent_claimers_never_share_a_job(db_url: str) -> None:
    """Several queues on separate engines (as separate processes would be) claim all jobs exactly once."""
    async def main() -> None:
        dbs = [Database(db_url) for _ in range(4)]
        await dbs[0].migrate()
        try:
            queues = [JobQueue(db) for db in dbs]
            ids = {await queues[0].enqueue("ingest", {"n": n}) for n in range(30)}

            async def drain(q: JobQueue) -> list[str]:
                got = []
                while (job := await q.claim()) is not None:
                    got.append(job.id)
                    await q.complete(job)
                return got

            claimed = [i for batch in await asyncio.gather(*(drain(q) for q in queues)) for i in batch]
            assert sorted(claimed) == sorted(ids)
        finally:
            for db in dbs:
                await db.close()

    asyncio.run(main())


def test_workers_run_retry_and_fail_jobs(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        calls: dict[str, int] = {}
        finished = asyncio.Event()

        async def handler(job: Job) -> dict[str, Any]:
            name = job.payload["name"]
            calls[name] = calls.get(name, 0) + 1
            try:
                if name == "flaky" and calls[name] == 1:
                    raise RuntimeError("HTTP 500")
                if name == "refused":
                    raise PermanentJobError("refused: loopback")
                return {"ran": calls[name]}
            finally:
                if sum(calls.values()) >= 4:
                    finished.set()

        workers = JobWorkers(q, {"test": handler}, count=2, poll_seconds=0.05)
        workers.start()
        try:
            ids = {name: await q.enqueue("test", {"name": name}) for name in ("ok", "flaky", "refused")}
            await asyncio.wait_for(finished.wait(), 30)
            await _until(lambda: _states(q, ids), {"ok": DONE, "flaky": DONE, "refused": FAILED})
        finally:
            await workers.stop()
        flaky = await q.get(ids["flaky"])
        assert flaky is not None and flaky.attempts == 2 and flaky.result == {"ran": 2}
        refused = await q.get(ids["refused"])
        assert refused is not None and refused.attempts == 1 and refused.last_error == "refused: loopback"

    run(db_url, scenario, backoff_seconds=0)


def test_stop_hands_a_running_job_back(db_url: str) -> None:
    async def scenario(q: JobQueue) -> None:
        started = asyncio.Event()

        async def endless(job: Job) -> None:
            started.set()
            await asyncio.Event().wait()

        workers = JobWorkers(q, {"test": endless}, count=1, poll_seconds=0.05, grace_seconds=0.1)
        workers.start()
        job_id = await q.enqueue("test", {})
        await asyncio.wait_for(started.wait(), 30)
        await workers.stop()
        stored = await q.get(job_id)
        assert stored is not None and stored.state == PENDING and stored.attempts == 0

    run(db_url, scenario)


async def _states(q: JobQueue, ids: dict[str, str]) -> dict[str, str]:
    return {name: (await q.get(i)).state for name, i in ids.items()}  # type: ignore[union-attr]


async def _until(probe: Any, expected: Any, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await probe()) != expected:
        assert asyncio.get_running_loop().time() < deadline, value
        await asyncio.sleep(0.05)
