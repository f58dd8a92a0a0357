"""The client side of the command line: upload, download, get and search, on FhirClient."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fhirvault import jsoncodec
from fhirvault.client.direct_upload import DirectSource, direct_attachment
from fhirvault.client.errors import FhirError
from fhirvault.client.operations import attachment_for
from fhirvault.client.sync_client import FhirClient
from fhirvault.client.transfer import ProgressCallback, UploadBody
from fhirvault.fhir.attachments import attachment_elements, is_attachment_element
from fhirvault.fhir.r4 import is_resource_type, is_valid_id


def add_client_commands(sub: Any) -> None:
    """Register upload, download, get and search on the main parser's subcommands."""
    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("connection (else FHIRVAULT_URL, _CLIENT_ID, _CLIENT_SECRET, _TOKEN, a profile)")
    group.add_argument("--url", help="FHIR base URL, e.g. http://127.0.0.1:8000/fhir/R4")
    group.add_argument("--client-id")
    group.add_argument("--client-secret")
    group.add_argument("--token", help="a bearer token to use as is")
    group.add_argument("--profile", help="table of ~/.config/fhirvault/client.toml (FHIRVAULT_CLIENT_CONFIG)")

    up = sub.add_parser("upload", parents=[conn], help="upload a file as a Binary")
    up.add_argument("file", type=Path, help="the file to upload")
    up.add_argument("--content-type", help="default: guessed from the file name")
    up.add_argument("--filename", help="file name kept for downloads (default: the file's name)")
    up.add_argument("--security-context", help="e.g. Patient/123")
    up.add_argument("--attach-to", metavar="REF", help="add the upload as an Attachment to this resource")
    up.add_argument("--element", default="photo", help="the Attachment element of --attach-to (default: photo)")
    up.add_argument("--direct", action="store_true",
                    help="upload straight to the server's object store (s3 mode; an error where not offered)")
    up.add_argument("--json", action="store_true", help="print the created Binary as JSON")
    up.add_argument("--resumable", action="store_true",
                    help="upload with tus (Binary/$upload); run again after an interruption to go on where it "
                         "stopped (state in ~/.cache/fhirvault/uploads)")
    up.add_argument("--chunk-size", type=int, metavar="BYTES", help="with --resumable: bytes per request "
                    "(default: all in one)")
    up.set_defaults(func=cmd_upload)

    down = sub.add_parser("download", parents=[conn], help="download a Binary or a signed URL")
    down.add_argument("target", metavar="REF_OR_URL", help="Binary/123 or a URL")
    down.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    down.set_defaults(func=cmd_download)

    get = sub.add_parser("get", parents=[conn], help="print a resource as JSON")
    get.add_argument("reference", metavar="REF", help="Type/id or Type/id/_history/version")
    get.set_defaults(func=cmd_get)

    search = sub.add_parser("search", parents=[conn], help="print matching resources, one JSON per line")
    search.add_argument("resource_type", metavar="TYPE")
    search.add_argument("params", nargs="*", metavar="key=value")
    search.set_defaults(func=cmd_search)


def connect(args: argparse.Namespace) -> FhirClient:
    """A FhirClient for the server, credentials and profile that the command line and the client settings
    (FHIRVAULT_* variables, the profile file) name."""
    from fhirvault.config import load_client_settings

    settings = load_client_settings(args.profile, url=args.url, client_id=args.client_id,
                                    client_secret=args.client_secret, token=args.token)
    if not settings.url:
        raise ValueError("no FHIR base URL: give --url, set FHIRVAULT_URL, or use a profile")
    if settings.token:
        # A token given anywhere wins over client credentials: it was asked for explicitly.
        return FhirClient(settings.url, token=settings.token)
    return FhirClient(settings.url, client_id=settings.client_id or None,
                      client_secret=settings.client_secret or None, token_url=settings.token_url or None)


@contextmanager
def transfer_progress(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar (bytes, speed, time left) on standard error, shown only when standard
    output is a terminal (so pipes and scripts get clean output)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), disable=not sys.stdout.isatty(),
                        transient=False)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload a file as a Binary; with --attach-to, check the target and element first, make the Binary's
    securityContext the target (so the clients that may read the target may read it), and never leave an
    unreported Binary behind when attaching fails."""
    def run(client: FhirClient) -> None:
        target = _attach_target(args.attach_to, args.element) if args.attach_to else None
        filename = args.filename or args.file.name
        security_context = args.security_context
        if target is not None:
            client.read_resource(*target)  # it must exist (and be readable) before anything is uploaded
            security_context = security_context or "/".join(target)
        if args.direct:
            source = DirectSource(args.file)  # read once for its hashes, before the progress bar
            with transfer_progress(f"upload {filename} (direct)") as on_progress:
                binary = client.create_binary_direct(source, content_type=args.content_type, filename=filename,
                                                     security_context=security_context, on_progress=on_progress)
            attachment = direct_attachment(binary, source, filename)
        elif args.resumable:
            with transfer_progress(f"upload {filename}") as on_progress:
                binary = client.create_binary(args.file, content_type=args.content_type, filename=filename,
                                              security_context=security_context, on_progress=on_progress,
                                              resumable=True, chunk_size=args.chunk_size)
            # The server fills in size and hash from the Binary when the Attachment is written.
            attachment = {"contentType": binary.get("contentType"), "url": f"Binary/{binary['id']}",
                          "title": filename}
        else:
            with transfer_progress(f"upload {filename}") as on_progress:
                body = UploadBody(args.file, on_progress)
                binary = client.create_binary(body, content_type=args.content_type, filename=filename,
                                              security_context=security_context)
            attachment = attachment_for(binary, body, filename)
        if target is not None:
            try:
                attach(client, args.attach_to, args.element, attachment)
            except BaseException:
                _remove_orphan(client, binary)
                raise
        if args.json:
            print(jsoncodec.dumps(binary, indent=True).decode())
        else:
            print(f"Binary/{binary['id']}")
            if args.attach_to:
                print(f"attached to {args.attach_to} as {args.element}", file=sys.stderr)

    return _guarded(args, run)


def _attach_target(reference: str, element: str) -> tuple[str, str]:
    """(type, id) of --attach-to; ValueError, before anything is sent, when it is not `Type/id` or the
    element is not an Attachment element of that type (R4, e.g. Patient.photo, Media.content)."""
    rtype, _, rid = reference.strip("/").partition("/")
    if not is_resource_type(rtype) or not is_valid_id(rid):
        raise UsageError(f"--attach-to needs a reference like Patient/123, got {reference!r}")
    if not is_attachment_element(rtype, element):
        choices = ", ".join(attachment_elements(rtype)) or "none"
        raise UsageError(f"--element {element!r} is not an Attachment element of {rtype} "
                         f"(its Attachment elements: {choices})")
    return rtype, rid


def _remove_orphan(client: FhirClient, binary: dict[str, Any]) -> None:
    """Delete the Binary an attach failed for, saying so (or, when that fails too, naming it to clean up)."""
    ref = f"Binary/{binary['id']}"
    try:
        client.delete_resource("Binary", str(binary["id"]))
    except Exception as exc:  # noqa: BLE001 - reported: the user must know what is left over
        print(f"the uploaded {ref} could not be deleted ({exc}); delete it yourself", file=sys.stderr)
        return
    print(f"the uploaded {ref} was deleted (its content stays in its history until `fhirvault expunge {ref}` "
          "on the server)", file=sys.stderr)


def attach(client: FhirClient, reference: str, element: str, attachment: dict[str, Any]) -> dict[str, Any]:
    """Add the Attachment to the resource's element and save it, conditional on the version read.
    Repeating elements (Patient.photo, ...) get it appended; a single Attachment already there, or a
    `...Attachment` choice element (Observation.valueAttachment), is replaced."""
    rtype, _, rid = reference.partition("/")
    if not rtype or not rid:
        raise ValueError(f"--attach-to needs Type/id, got {reference!r}")
    resource = client.read_resource(rtype, rid)
    current = resource.get(element)
    if isinstance(current, dict) or (current is None and element.endswith("Attachment")):
        resource[element] = attachment
    else:
        resource[element] = [*(current or []), attachment]
    return client.update_resource(resource, if_match=(resource.get("meta") or {}).get("versionId"))


def cmd_download(args: argparse.Namespace) -> int:
    """`fhirvault download TARGET [-o FILE]`: streams a Binary's or Attachment's bytes to FILE or standard
    output with a progress bar on standard error; returns the exit status."""
    def run(client: FhirClient) -> None:
        with transfer_progress(f"download {args.target}") as on_progress:
            if args.output is not None:
                client.download(args.target, args.output, on_progress=on_progress)
            else:
                client.download(args.target, sys.stdout.buffer, on_progress=on_progress)
                sys.stdout.buffer.flush()

    return _guarded(args, run)


def cmd_get(args: argparse.Namespace) -> int:
    """`fhirvault get Type/id[/_history/vid]`: prints the resource as JSON; returns the exit status."""
    def run(client: FhirClient) -> None:
        parts = args.reference.strip("/").split("/")
        if len(parts) == 2:
            resource = client.read_resource(parts[0], parts[1])
        elif len(parts) == 4 and parts[2] == "_history":
            resource = client.vread(parts[0], parts[1], parts[3])
        else:
            raise ValueError(f"REF must be Type/id or Type/id/_history/version, got {args.reference!r}")
        print(jsoncodec.dumps(resource, indent=True).decode())

    return _guarded(args, run)


def cmd_search(args: argparse.Namespace) -> int:
    """`fhirvault search Type key=value...`: prints every matching resource as JSON, following pages; returns
    the exit status."""
    def run(client: FhirClient) -> None:
        params: list[tuple[str, str]] = []
        for item in args.params:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"search parameters are key=value, got {item!r}")
            params.append((key, value))
        told: set[str] = set()

        def warn(outcome: dict[str, Any]) -> None:
            for issue in outcome.get("issue") or []:
                text = f"{issue.get('severity', 'warning')}: {issue.get('diagnostics', '')}"
                if text not in told:  # the same warning comes with every page
                    told.add(text)
                    print(text, file=sys.stderr)

        for resource in client.search(args.resource_type, params, on_outcome=warn):
            print(jsoncodec.dumps(resource).decode())

    return _guarded(args, run)


class UsageError(ValueError):
    """The command line asks for something that cannot be (exit status 2, nothing sent)."""


def _guarded(args: argparse.Namespace, run: Any) -> int:
    """Run a command; errors become one line on standard error and a non-zero exit status: 1 for what the
    server or the network answered, 2 for wrong usage. A reader that stops early (`| head`) ends the
    command quietly with status 0: the reader had what it wanted (so `set -o pipefail` scripts go on)."""
    url = ""
    try:
        with connect(args) as client:
            url = client.base_url
            run(client)
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except FhirError as exc:
        status = f" (HTTP {exc.status})" if exc.status else ""
        print(f"error{status}: {exc}{_base_hint(url) if exc.status == 404 else ''}", file=sys.stderr)
        return 1
    except httpx.ConnectError as exc:
        where = exc.request.url if _has_request(exc) else url
        print(f"error: cannot connect to {where}: {_reason(exc)}; is the server running, and is the URL "
              f"right?{_base_hint(url)}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        where = f" ({exc.request.url})" if _has_request(exc) else ""
        print(f"error: {type(exc).__name__}{where}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when the error carries no request
    except RuntimeError:
        return False
    return True


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text or type(exc).__name__


def _base_hint(url: str) -> str:
    """A hint when the FHIR base URL lacks fhirvault's `/fhir/R4` path (the usual cause of a 404 on every
    request)."""
    if not url or url.rstrip("/").endswith("/fhir/R4"):
        return ""
    return f"\nhint: the FHIR base URL is {url}; fhirvault serves FHIR under /fhir/R4, e.g. " \
        f"{url.rstrip('/')}/fhir/R4"


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's final flush cannot fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
