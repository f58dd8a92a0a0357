"""The fhirvault command line: serve, and the administrative and client commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import inspect
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fhirvault.config import ENV_PREFIX, Settings, load_settings, settings_as_env

if TYPE_CHECKING:  # the commands import their parts lazily, so `fhirvault --help` starts fast
    from fhirvault.app import FhirVault
    from fhirvault.jobs.queue import Job
    from fhirvault.security.clients import Client, ClientStore

T = TypeVar("T")


PRIVATE_UMASK = 0o077  # files 0600, directories 0700


class StartupError(Exception):
    """A setting, file, database or port that keeps a command from starting: one line for the user that
    names it and says what to do, and the exit status (2: the configuration is wrong, 1: a service is)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _shown_database(url: str) -> str:
    """The database URL as the start-up banner shows it: the password masked."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if "password" in parsed.query:  # libpq also takes it as a query parameter
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _server_settings(args: argparse.Namespace) -> Settings:
    """The server settings; StartupError naming the file or setting when they cannot be read. Every
    command that opens the server's data runs with a private umask: the database holds the token and URL
    signing keys and all patient data, so nothing it (or SQLite's journal, or a blob store) creates may
    be readable by other users."""
    os.umask(PRIVATE_UMASK)
    import tomllib

    from pydantic import ValidationError

    overrides: dict[str, Any] = {}
    for name in ("host", "port", "workers", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    config = getattr(args, "config", None)
    try:
        return load_settings(config, **overrides)
    except FileNotFoundError:
        raise StartupError(f"the config file {config} does not exist (--config)", 2) from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"the config file {config} is not valid TOML: {exc} (--config)", 2) from None
    except OSError as exc:
        raise StartupError(f"the config file {config} cannot be read: {exc.strerror or exc} (--config)", 2) \
            from None
    except ValidationError as exc:
        raise StartupError(_settings_problem(exc), 2) from None


def _settings_problem(exc: Any) -> str:
    """One line naming the first invalid setting, the value given, what it must be and where it is set."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error.get("loc") else "?"
    value = error.get("input")
    if name == "database_url" and isinstance(value, str):
        value = _safe_url(value)
    elif "secret" in name or "key" in name:
        value = None  # never echo credentials
    given = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return (f"setting {name.upper()}{given} is not valid: {error['msg']}; set {ENV_PREFIX}{name.upper()} "
            f"in the environment or {name} in the --config file")


def _database_problem(exc: BaseException, url: str) -> StartupError:
    """StartupError for a database that cannot be opened, naming it without its password."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return StartupError(f"cannot open the database {_safe_url(url)}: {first_line}; check DATABASE_URL "
                        f"({ENV_PREFIX}DATABASE_URL) and that the database server is running")


def _run_with_clients(settings: Settings, work: Callable[[ClientStore], Awaitable[T]]) -> T:
    """Runs `work(ClientStore)` on the configured database, migrated first; StartupError when the database
    cannot be opened."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from fhirvault.errors import Unavailable
    from fhirvault.security.clients import ClientStore
    from fhirvault.store.database import Database

    async def run() -> T:
        db = Database(settings.database_url, pool_size=settings.database_pool_size,
                      max_overflow=settings.database_max_overflow)
        try:
            try:
                await db.migrate()
            except (DBAPIError, OSError, Unavailable) as exc:
                # Unavailable wraps the driver's error, whose first line names the cause (refused, auth, ...)
                cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ is not None else exc
                raise _database_problem(cause, settings.database_url) from None
            return await work(ClientStore(db, settings.auth_failure_limit, settings.auth_failure_window))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except ArgumentError as exc:
        raise StartupError(f"DATABASE_URL {_safe_url(settings.database_url)} is not usable: {exc}", 2) from None


def _bootstrap_admin(settings: Settings) -> Any:
    """The admin client created on the first start (None when one existed), with its secret."""
    from fhirvault.security.bootstrap import ensure_admin_client

    token_url = f"{settings.public_base_url}/oauth2/token"
    return _run_with_clients(settings, lambda clients: ensure_admin_client(
        clients.db, clients, settings.data_dir, token_url, settings.fhir_base_url))


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything is announced; StartupError when the port is
    taken or the address is not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use; stop what listens there or choose "
                               "another port with --port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port") \
            from None
    sock.set_inheritable(True)  # worker processes serve the same socket
    return sock


def _private_data_dir(data_dir: Path) -> None:
    """Creates the data dir with mode 0700; warns when an existing one (or its database) is open to others."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (data_dir, data_dir / "fhirvault.db"):
        if path.exists() and path.stat().st_mode & 0o077:
            mode = path.stat().st_mode & 0o777
            print(f"  WARNING: {path.resolve()} is readable by other users (mode {mode:04o}); it holds the "
                  f"signing keys and patient data: chmod {'700' if path.is_dir() else '600'} {path}",
                  file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the settings, open and migrate the database, bind the port, and only then announce the
    server and run it; each failure before that is one line naming what to fix (see StartupError)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from fhirvault.http.serving import GracefulServer
    from fhirvault.security.bootstrap import ADMIN_FILE

    settings = _server_settings(args)
    bare_database_url = "DATABASE_URL" in os.environ and "FHIRVAULT_DATABASE_URL" not in os.environ
    try:
        _private_data_dir(settings.data_dir)
    except OSError as exc:
        raise StartupError(f"cannot create the data directory {settings.data_dir}: {exc.strerror or exc} "
                           "(--data-dir)") from None
    # The port first: a start that fails on it must not have made the admin client, whose secret is shown
    # only by the start that makes it.
    sock = _listening_socket(settings.host, settings.port)
    new_admin = _bootstrap_admin(settings)
    # Worker processes rebuild the same Settings from the environment.
    os.environ.update(settings_as_env(settings))
    print(f"fhirvault {_version()} serving FHIR R4 at {settings.fhir_base_url}", flush=True)
    print(f"  data: {settings.data_dir.resolve()}  storage: {settings.storage_mode}", flush=True)
    print(f"  database: {_shown_database(settings.database_url)}", flush=True)
    if bare_database_url:
        # the usual name of other tools: set alone, it was ignored without a word and SQLite used instead
        print("fhirvault: note: DATABASE_URL is set but not read; the setting is FHIRVAULT_DATABASE_URL",
              file=sys.stderr, flush=True)
    print(f"  token endpoint: {settings.public_base_url}/oauth2/token", flush=True)
    if new_admin is not None:
        # Shown once, on the first start only; the file keeps them for scripts (mode 0600).
        print("  created the admin client (system/*.*); its secret is shown only this once:", flush=True)
        print(f"    client_id:     {new_admin.client.client_id}", flush=True)
        print(f"    client_secret: {new_admin.client_secret}", flush=True)
        print(f"    also written to {(settings.data_dir / ADMIN_FILE).resolve()}", flush=True)
    processes = settings.worker_processes
    config = uvicorn.Config(
        "fhirvault.app:app_from_environment",
        factory=True,
        workers=processes if processes > 1 else None,
        loop="uvloop",
        # httptools with fhirvault's limits on header size, header read time and body idle time.
        http="fhirvault.http.connection_limits:LimitedHttpProtocol",
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds)),
        server_header=False,
    )
    server = GracefulServer(config)  # SIGTERM: finish in-flight requests, then exit 0
    if processes > 1:
        # Older uvicorn releases take the worker's entry point; newer ones build it from the config.
        extra = {"target": server.run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[sock], **extra).run()
    else:
        server.run(sockets=[sock])
    return 0 if server.started or processes > 1 else 1


def _client_json(client: Client, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"client_id": client.client_id, "name": client.name, "scope": client.scopes.text,
                           "patient": client.patient, "enabled": client.enabled}
    if secret is not None:
        out["client_secret"] = secret
    return out


def cmd_clients(args: argparse.Namespace) -> int:
    """`fhirvault clients ...`: create, list, disable OAuth2 clients and rotate their secrets, on the
    configured database; returns the exit status (2 for a usage mistake)."""
    from fhirvault.errors import FhirVaultError

    settings = _server_settings(args)
    try:
        if args.action == "create":
            new = _run_with_clients(settings, lambda c: c.create(args.name, args.scope, args.patient))
            if args.json:
                print(json.dumps(_client_json(new.client, new.client_secret)))
            else:
                print(f"client_id:     {new.client.client_id}")
                print(f"client_secret: {new.client_secret}")
                print("The secret is shown only this once.")
        elif args.action == "list":
            listed = _run_with_clients(settings, lambda c: c.all())
            if args.json:
                print(json.dumps([_client_json(c) for c in listed]))
            for c in [] if args.json else listed:
                state = "enabled" if c.enabled else "disabled"
                print(f"{c.client_id}  {state:8}  {c.name}  {c.scopes.text}  {c.patient or ''}".rstrip())
        elif args.action == "disable":
            _run_with_clients(settings, lambda c: c.disable(args.client_id))
            print(f"client {args.client_id} disabled")
        elif args.action == "rotate-secret":
            secret = _run_with_clients(settings, lambda c: c.rotate_secret(args.client_id))
            if args.json:
                print(json.dumps({"client_id": args.client_id, "client_secret": secret}))
            else:
                print(f"client_secret: {secret}")
                print("The new secret is shown only this once; the old one no longer works.")
    except FhirVaultError as exc:
        print(f"fhirvault clients {args.action}: {exc.message}", file=sys.stderr)
        return 2
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Rotate the token signing keys, or with --url-signing the keys that sign storage URLs."""
    from fhirvault.security.keys import KeyRing
    from fhirvault.security.url_signing import KEY_REFRESH_SECONDS, SignedUrl

    settings = _server_settings(args)
    if args.url_signing:
        kid, removed = _run_with_clients(settings, lambda c: SignedUrl(
            c.db, settings.public_base_url, settings.signed_url_ttl, settings.signed_url_window).rotate())
        print(f"new URL signing key {kid} (signs from {KEY_REFRESH_SECONDS:.0f} s on, once every node has "
              f"read it); removed {len(removed)} key(s) no valid URL can still use")
        return 0
    kid, removed = _run_with_clients(
        settings, lambda c: KeyRing(c.db).rotate(keep_seconds=settings.token_lifetime))
    print(f"new signing key {kid}; removed {len(removed)} key(s) no valid token can still use")
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
    """`fhirvault jobs list`: the durable jobs, newest first, as JSON lines; returns the exit status."""
    import asyncio
    import json

    from fhirvault.jobs.fetcher import redacted
    from fhirvault.jobs.queue import JobQueue
    from fhirvault.store.database import Database

    settings = _server_settings(args)

    async def fetch() -> tuple[list[Job], dict[str, int]]:
        db = Database(settings.database_url, pool_size=settings.database_pool_size,
                      max_overflow=settings.database_max_overflow)
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
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def _version() -> str:
    from fhirvault import __version__

    return __version__


def _on_vault(args: argparse.Namespace, work: Callable[[FhirVault], Awaitable[T]]) -> T:
    """Runs `work` on the server's parts built from the command's settings, the database migrated
    first; the parts are stopped afterwards, also when migrating or the work fails."""
    from fhirvault.app import FhirVault

    async def run() -> T:
        vault = FhirVault(_server_settings(args))
        try:
            await vault.db.migrate()
            return await work(vault)
        finally:
            await vault.stop()

    return asyncio.run(run())


def cmd_expunge(args: argparse.Namespace) -> int:
    """Remove a resource's whole history and the bytes its versions own; cannot be undone."""
    rtype, _, rid = args.reference.partition("/")
    if not rtype or not rid:
        print(f"'{args.reference}' is not a reference like Binary/123", file=sys.stderr)
        return 2

    async def expunge(vault: FhirVault) -> int:
        return await vault.binaries.expunge(rtype, rid)

    removed = _on_vault(args, expunge)
    if not removed:
        print(f"{args.reference} is not known", file=sys.stderr)
        return 1
    print(f"expunged {args.reference}: {removed} versions and their content")
    return 0


def cmd_storage_stats(args: argparse.Namespace) -> int:
    """Print what the blob store holds: committed blobs, bytes stored, bytes deduplication saved."""
    async def stats(vault: FhirVault) -> dict[str, Any]:
        async with vault.db.read() as conn:
            found = await vault.blob_registry.stats(conn)
        return {"storage_mode": vault.settings.storage_mode, "dedup_enabled": vault.settings.dedup_enabled,
                **dataclasses.asdict(found)}

    figures = _on_vault(args, stats)
    if args.json:
        print(json.dumps(figures))
        return 0
    labels = {"storage_mode": "storage mode", "dedup_enabled": "dedup enabled", "blobs": "blobs",
              "bytes_stored": "bytes stored", "bytes_saved": "bytes saved", "references": "references",
              "pending": "pending blobs", "released": "released blobs"}
    for key, label in labels.items():
        value = figures[key]
        print(f"{label:<15} {str(value).lower() if isinstance(value, bool) else value}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the search index of one resource type, or of all; resumable if interrupted."""
    from fhirvault.fhir.r4 import is_resource_type

    if args.type is not None and not is_resource_type(args.type):
        print(f"'{args.type}' is not an R4 resource type", file=sys.stderr)
        return 2

    async def reindex(vault: FhirVault) -> int:
        await vault.reindexer.mark(args.type)
        return await vault.reindexer.run(
            progress=lambda rtype, n: print(f"  {rtype}: {n} more", file=sys.stderr, flush=True))

    count = _on_vault(args, reindex)
    print(f"reindexed {count} resources")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Queue malware scans of stored content: content never scanned (stored before scanning was on, or
    in error), or with --rescan-all every content (after a signature update). The jobs run in the
    servers' (or `fhirvault worker`'s) job loops."""
    settings = _server_settings(args)
    if settings.scan_mode == "off":
        print("SCAN_MODE is off: set it to record or block (and SCAN_CLAMD_URL) to scan content", file=sys.stderr)
        return 2

    async def queue(vault: FhirVault) -> dict[str, int]:
        return await vault.scans.queue_existing(rescan_all=args.rescan_all)

    counts = _on_vault(args, queue)
    print(f"looked at {counts['versions']} stored versions; queued {counts['queued']} scans")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """List the stored resources that R4 validation would now refuse (stored before validation, or
    while VALIDATION_ENABLED was off); they stay readable. Exit status 1 when there is any."""
    from fhirvault.fhir.r4 import is_resource_type
    from fhirvault.fhir.validation import validate_resource

    if args.type and not is_resource_type(args.type):
        print(f"'{args.type}' is not an R4 resource type", file=sys.stderr)
        return 2

    async def check(vault: FhirVault) -> tuple[int, int]:
        checked = failing = 0
        after: tuple[str, str] | None = None
        while True:
            async with vault.db.read() as conn:
                page = await vault.store.current_page(conn, args.type, after, 500)
            if not page:
                return checked, failing
            for stored in page:
                checked += 1
                errors = [i for i in validate_resource(stored.content) if i.severity == "error"]
                if errors:
                    failing += 1
                    for issue in errors:
                        print(f"{stored.resource_type}/{stored.id}\t{issue.expression}\t{issue.message}")
            after = (page[-1].resource_type, page[-1].id)

    checked, failing = _on_vault(args, check)
    print(f"checked {checked} resources: {failing} would fail R4 validation", file=sys.stderr)
    return 1 if failing else 0


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="where the embedded database and blobs live")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every `fhirvault` command and its options."""
    parser = argparse.ArgumentParser(prog="fhirvault", description="A FHIR R4 server built for binary data")
    parser.add_argument("--version", action="version", version=f"fhirvault {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    _add_server_options(serve)
    serve.set_defaults(func=cmd_serve)

    reindex = sub.add_parser("reindex", help="rebuild the search index (of one resource type, or of all)")
    reindex.add_argument("type", nargs="?", help="a resource type, e.g. Patient; all types when left out")
    _add_server_options(reindex)
    reindex.set_defaults(func=cmd_reindex)
    check = sub.add_parser("check", help="list stored resources that R4 validation would refuse now")
    check.add_argument("type", nargs="?", help="only resources of this type")
    _add_server_options(check)
    check.set_defaults(func=cmd_check)
    scan = sub.add_parser("scan", help="queue malware scans of stored content (SCAN_MODE record or block)")
    scan.add_argument("--rescan-all", action="store_true",
                      help="scan every content again, e.g. after a signature update (verdicts stay until replaced)")
    _add_server_options(scan)
    scan.set_defaults(func=cmd_scan)
    expunge = sub.add_parser("expunge", help="remove a resource's history and content for good")
    expunge.add_argument("reference", help="Type/id, e.g. Binary/123")
    _add_server_options(expunge)
    expunge.set_defaults(func=cmd_expunge)
    storage = sub.add_parser("storage", help="blob storage").add_subparsers(dest="action", required=True)
    storage_stats = storage.add_parser("stats", help="print blobs, bytes stored and bytes saved by deduplication")
    storage_stats.add_argument("--json", action="store_true", help="one JSON object")
    _add_server_options(storage_stats)
    storage_stats.set_defaults(func=cmd_storage_stats)
    clients = sub.add_parser("clients", help="manage OAuth2 clients").add_subparsers(dest="action", required=True)
    create = clients.add_parser("create", help="create a client and print its id and secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, help='SMART scopes, e.g. "system/*.cruds"')
    create.add_argument("--patient", help="fixed patient context, e.g. Patient/123 (with patient/ scopes)")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = clients.add_parser("list", help="list the clients (never their secrets)")
    listing.add_argument("--json", action="store_true")
    disable = clients.add_parser("disable", help="refuse the client's tokens and token requests")
    disable.add_argument("client_id")
    rotate = clients.add_parser("rotate-secret", help="give a client a new secret, printed once")
    rotate.add_argument("client_id")
    rotate.add_argument("--json", action="store_true")
    for p in (create, listing, disable, rotate):
        _add_server_options(p)
        p.set_defaults(func=cmd_clients)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="action", required=True)
    keys_rotate = keys.add_parser("rotate", help="sign new tokens with a new key; older keys keep verifying")
    keys_rotate.add_argument("--url-signing", action="store_true",
                             help="rotate the keys of signed storage URLs instead (older keys keep verifying)")
    _add_server_options(keys_rotate)
    keys_rotate.set_defaults(func=cmd_keys_rotate)
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
    from fhirvault.client.commands import add_client_commands

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `fhirvault` entry point: parses `argv` (None: sys.argv) and runs the command; returns the process
    exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except StartupError as exc:
        print(f"fhirvault {args.command}: {exc}", file=sys.stderr)
        return exc.status
    return result


if __name__ == "__main__":
    sys.exit(main())
