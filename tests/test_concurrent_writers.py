"""Concurrent writers on one resource, through two server processes on one PostgreSQL database: versions
stay consecutive, exactly one writer wins each version, the others get 412, and no update is lost."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.server import FhirApi, ServerProcess

WRITERS = 50
ROUNDS = 3  # rounds of WRITERS concurrent conditional writes, each against the version current at its start
UNCONDITIONAL = 10_000  # the first number of the unconditional writers


@pytest.fixture(scope="module")
def two_nodes(server_factory: Callable[..., ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    first = server_factory("postgres", storage_mode="filesystem")
    url = first.env["FHIRVAULT_DATABASE_URL"]
    # As behind a load balancer: one public base URL (the tokens' audience), one database, one shared
    # blob directory.
    second = server_factory("postgres", database_url=url, storage_mode="filesystem",
                            storage_dir=str(first.data_dir / "blobs"), public_base_url=first.url)
    return first, second


def _clients(nodes: tuple[ServerProcess, ServerProcess]) -> list[FhirApi]:
    headers = nodes[0].auth_headers()  # tokens are signed with keys in the shared database
    return [FhirApi(node.base, headers=headers, timeout=120,
                    limits=httpx.Limits(max_connections=WRITERS)) for node in nodes]


def _version(answer: httpx.Response) -> int:
    assert "ETag" in answer.headers, (answer.status_code, answer.text[:500])
    return int(answer.headers["ETag"].split('"')[1])


def _round(attempt: Callable[[FhirApi, int], httpx.Response], clients: list[FhirApi]) -> dict[int, httpx.Response]:
    """WRITERS threads, released together, each calling `attempt(client, writer)` once on alternating nodes."""
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> httpx.Response:
        start.wait()
        return attempt(clients[n % len(clients)], n)

    with ThreadPoolExecutor(WRITERS) as pool:
        futures = {n: pool.submit(writer, n) for n in range(WRITERS)}
        return {n: future.result() for n, future in futures.items()}


def _conditional_rounds(current: Callable[[], int], attempt: Callable[[FhirApi, int, int], httpx.Response],
                        clients: list[FhirApi], allowed_losses: set[int]) -> dict[int, int]:
    """ROUNDS rounds of WRITERS writes all conditioned on the version current before the round: exactly one
    wins (200, the next version), every other one is refused. Returns {version: winning writer}."""
    winners: dict[int, int] = {}
    for round_number in range(ROUNDS):
        version = current()
        answers = _round(lambda client, n, base=round_number * WRITERS, v=version: attempt(client, base + n, v),
                         clients)
        won = {round_number * WRITERS + n: a for n, a in answers.items() if a.status_code == 200}
        losses = {a.status_code for a in answers.values() if a.status_code != 200}
        assert len(won) == 1, sorted((a.status_code, a.text[:200]) for a in answers.values())
        assert losses <= allowed_losses and losses, losses
        ((writer, answer),) = won.items()
        assert _version(answer) == version + 1
        winners[version + 1] = writer
    return winners


def _history_markers(api: FhirApi, path: str, read: Callable[[dict[str, Any]], Any]) -> dict[int, Any]:
    entries: dict[int, Any] = {}
    url: str | None = f"{path}/_history"
    params: dict[str, Any] | None = {"_count": 500}
    while url:
        page = api.get(url, params=params).json()
        params = None
        for entry in page.get("entry", []):
            resource = entry["resource"]
            entries[int(resource["meta"]["versionId"])] = read(resource)
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return entries


def _family(resource: dict[str, Any]) -> Any:
    return resource.get("name", [{}])[0].get("family")


def test_if_match_updates_from_two_nodes(two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    clients = _clients(two_nodes)
    pid = clients[0].post("/Patient", json={"resourceType": "Patient"}).json()["id"]

    def put(client: FhirApi, n: int, if_match: int | None) -> httpx.Response:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match is not None else {}
        return client.put(f"/Patient/{pid}", headers=headers,
                          json={"resourceType": "Patient", "id": pid, "name": [{"family": f"writer-{n}"}]})

    # Unconditional: every update wins a version of its own, none is lost. Their writers are numbered apart
    # from the conditional rounds' (from UNCONDITIONAL), so that no conditional write sends what is already
    # stored: that one would change nothing and answer 200 with the version it matched, without a write.
    answers = _round(lambda client, n: put(client, UNCONDITIONAL + n, None), clients)
    assert {a.status_code for a in answers.values()} == {200}
    plain = {_version(a): UNCONDITIONAL + n for n, a in answers.items()}
    assert sorted(plain) == list(range(2, WRITERS + 2))
    # Conditional: one winner per version, the others 412.
    winners = _conditional_rounds(lambda: _version(clients[0].get(f"/Patient/{pid}")),
                                  lambda client, n, version: put(client, n, version), clients, {412})
    history = _history_markers(clients[1], f"/Patient/{pid}", _family)
    assert sorted(history) == list(range(1, WRITERS + ROUNDS + 2))  # consecutive, nothing skipped
    assert {v: history[v] for v in plain} == {v: f"writer-{n}" for v, n in plain.items()}
    assert {v: history[v] for v in winners} == {v: f"writer-{n}" for v, n in winners.items()}


def test_transactions_touching_the_same_resources_from_two_nodes(
        two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    clients = _clients(two_nodes)
    ids = [clients[0].post("/Patient", json={"resourceType": "Patient"}).json()["id"] for _ in range(2)]

    def transaction(client: FhirApi, n: int, version: int) -> httpx.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": rid, "name": [{"family": f"tx-{n}"}]},
             "request": {"method": "PUT", "url": f"Patient/{rid}", "ifMatch": f'W/"{version}"'}} for rid in ids]}
        answer = client.post("", json=bundle)
        if answer.status_code == 200:
            # The winner's own versions, as an ETag on the answer, for _conditional_rounds.
            etags = {e["response"]["etag"] for e in answer.json()["entry"]}
            assert len(etags) == 1, etags
            answer.headers["ETag"] = etags.pop()
        return answer

    winners = _conditional_rounds(lambda: _version(clients[0].get(f"/Patient/{ids[0]}")), transaction, clients,
                                  {409, 412})
    # All or nothing: both resources went through the same winners, version by version.
    histories = [_history_markers(clients[1], f"/Patient/{rid}", _family) for rid in ids]
    assert histories[0] == histories[1]
    assert sorted(histories[0]) == list(range(1, ROUNDS + 2))
    assert {v: histories[0][v] for v in winners} == {v: f"tx-{n}" for v, n in winners.items()}


def test_binary_access_write_on_one_document_from_two_nodes(
        two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    clients = _clients(two_nodes)
    doc = clients[0].post("/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "application/pdf", "data": "AA=="}}]}).json()
    path = "DocumentReference.content[0].attachment"
    before = clients[0].get("/Binary", params={"_summary": "count"}).json()["total"]
    bodies = {n: os.urandom(70_000) + n.to_bytes(2, "big") for n in range(WRITERS * ROUNDS)}

    def write(client: FhirApi, n: int, version: int) -> httpx.Response:
        return client.post(f"/DocumentReference/{doc['id']}/$binary-access-write", params={"path": path},
                           content=bodies[n], headers={"Content-Type": "application/pdf",
                                                       "If-Match": f'W/"{version}"'})

    winners = _conditional_rounds(lambda: _version(clients[0].get(f"/DocumentReference/{doc['id']}")), write,
                                  clients, {412})
    # Each version's attachment reads back as the bytes of the writer that won it.
    for version, writer in winners.items():
        read = clients[version % 2].get(f"/DocumentReference/{doc['id']}/_history/{version}/$binary-access-read",
                                        params={"path": path})
        assert read.status_code == 200 and read.content == bodies[writer], version
    # The losers' bytes are gone: exactly one new Binary per winning write.
    after = clients[0].get("/Binary", params={"_summary": "count"}).json()["total"]
    assert after - before == ROUNDS
