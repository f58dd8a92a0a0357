"""The fhirvault command line: serve, and the administrative and client commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fhirvault.config import Settings, load_settings, settings_as_env


def _server_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "workers", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return load_settings(args.config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _server_settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Worker processes rebuild the same Settings from the environment.
    os.environ.update(settings_as_env(settings))
    print(f"fhirvault {_version()} serving FHIR R4 at {settings.fhir_base_url}", flush=True)
    print(f"  data: {settings.data_dir.resolve()}  storage: {settings.storage_mode}", flush=True)
    uvicorn.run(
        "fhirvault.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run background jobs only (for deployments that keep them apart from the web servers)."""
    import asyncio
    import logging
    import signal

    from fhirvault.app import FhirVault

    settings = _server_settings(args)
    settings.job_workers = max(1, settings.job_workers)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        vault = FhirVault(settings)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await vault.start()
        print(f"fhirvault worker: {settings.job_workers} job loop(s) on {_safe_url(settings.database_url)}",
              flush=True)
        try:
            await stop.wait()
        finally:
            await vault.stop()

    asyncio.run(run())
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from fhirvault.jobs.fetcher import redacted
    from fhirvault.jobs.queue import JobQueue
    from fhirvault.store.database import Database

    settings = _server_settings(args)

    async def fetch() -> tuple[list[Any], dict[str, int]]:
        db = Database(settings.database_url)
        try:
            await db.migrate()
            queue = JobQueue(db)
            return await queue.list(state=args.state, kind=args.kind, limit=args.limit), await queue.counts()
        finally:
            await db.close()

    jobs, counts = asyncio.run(fetch())
    if args.json:
        print(json.dumps({"counts": counts, "jobs": [j.as_json() for j in jobs]}, indent=2))
        return 0
    for job in jobs:
        target = redacted(str(job.payload["url"])) if "url" in job.payload else ""
        print(f"{job.id}  {job.state:<7}  attempts={job.attempts}  {job.kind}  {job.subject or ''}  {target}")
        if job.last_error:
            print(f"    error: {job.last_error}")
    print("  ".join(f"{state}: {n}" for state, n in counts.items()))
    return 0


def _safe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _version() -> str:
    from fhirvault import __version__

    return __version__


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="where the embedded database and blobs live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhirvault", description="A FHIR R4 server built for binary data")
    parser.add_argument("--version", action="version", version=f"fhirvault {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    _add_server_options(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run background jobs only")
    _add_server_options(worker)
    worker.set_defaults(func=cmd_worker)

    jobs = sub.add_parser("jobs", help="inspect background jobs").add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs.add_parser("list", help="list jobs, newest first")
    _add_server_options(jobs_list)
    jobs_list.add_argument("--state", choices=["pending", "running", "done", "failed"])
    jobs_list.add_argument("--kind")
    jobs_list.add_argument("--limit", type=int, default=100)
    jobs_list.add_argument("--json", action="store_true", help="one JSON object")
    jobs_list.set_defaults(func=cmd_jobs_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
