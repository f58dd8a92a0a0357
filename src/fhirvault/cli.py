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

    from fhirvault.client.commands import add_client_commands

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
