"""A search answer is one view of the database: its total, its matches and its included resources agree
even while other clients write (R4 search.html#total). Over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
import uuid

from tests.support.server import FhirApi, ServerProcess


def test_total_agrees_with_the_page_while_others_write(server: ServerProcess, api: FhirApi) -> None:
    family = f"snap{uuid.uuid4().hex[:10]}"
    ids = []
    for _ in range(10):
        r = api.post("/Patient", json={"resourceType": "Patient", "active": True, "name": [{"family": family}]})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    stop = time.monotonic() + 8
    problems: list[str] = []
    reads = [0]

    def write() -> None:
        with server.api() as client:
            while time.monotonic() < stop:
                pid = random.choice(ids)
                if random.random() < 0.3:
                    client.delete(f"/Patient/{pid}")
                else:
                    client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                        "active": random.random() < 0.5, "name": [{"family": family}]})

    def read() -> None:
        with server.api() as client:
            while time.monotonic() < stop:
                query = random.choice([{"family": family}, {"family": family, "active": "true"}])
                r = client.get("/Patient", params={**query, "_total": "accurate",
                                                   "_revinclude": "Observation:subject"})
                if r.status_code != 200:
                    problems.append(f"{r.status_code} {r.text[:200]}")
                    continue
                bundle = r.json()
                matches = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
                reads[0] += 1
                if bundle["total"] != len(matches):
                    problems.append(f"total {bundle['total']} beside {len(matches)} matches for {query}")

    threads = [threading.Thread(target=write) for _ in range(3)] + [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads[0] > 20
    assert problems == []
