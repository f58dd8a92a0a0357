"""Search speed against read by id, index size against the resource table, and the cost of indexing a create.

Generates N resources (Patients, Encounters, Observations, DocumentReferences, Media in proportions
10/20/50/10/10 %, with realistic value distributions) through fhirvault's own write path (the same
validation-free create use case and indexing as the REST API, in transactions of 500), then starts
`fhirvault serve` on that data and times 12 typical searches and a read by id over HTTP.

Run: .venv/bin/python bench/search.py [--resources 100000] [--repeats 40] [--backend sqlite,postgres]
                                     [--text-index on,off]
(`--text-index off`: the server's SEARCH_TEXT_INDEX=false, no word rows for `_text` / `_content`; each value
given is a run of its own.)

Prints, per backend: p50/p95 (ms) of each search and of a read by id measured in the same run, each
search's p50 as a ratio to the read's p50 (target <= 5), the server's CPU time per request and its ratio
to the read's (less moved by other load on the machine than wall times), the index tables' size against the resources
table (target <= 2) with the number of index rows (and of word rows among them), and the time to create
one Observation with and without indexing (target <= 1.3): in the storage layer alone (the use case called
in-process, no HTTP), and as a client sees it (a REST create against two servers on the same database, one
of them started with bench/no_index on PYTHONPATH so that it writes no index rows).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhirvault.app import FhirVault  # noqa: E402
from fhirvault.config import Settings  # noqa: E402
from fhirvault.fhir import search_index as search_index_module  # noqa: E402
from fhirvault.fhir.search_index import TEXT_PARAMS  # noqa: E402
from fhirvault.security.principal import SystemPrincipal  # noqa: E402
from fhirvault.service.context import RequestContext  # noqa: E402
from fhirvault.service.resources import UnitOfWork  # noqa: E402
from fhirvault.store.schema import resources as resources_table  # noqa: E402
from fhirvault.store.search_tables import INDEX_TABLES, search_strings  # noqa: E402

try:
    from fhirvault.store.sqlite_index_layout import RESOURCES_OWNER_INDEX
except ImportError:  # a release before schema 0015 (bench run against it for comparison): no such index
    RESOURCES_OWNER_INDEX = "ix_resources_owner_updated"
from tests.support.server import ServerProcess, postgres_available, postgres_database, settings_env  # noqa: E402

FAMILIES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "García", "Miller", "Davis", "Müller", "Martinez",
            "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Pérez"]
GIVEN = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "Zoë", "Élodie"]
LOINC = [("8867-4", "Heart rate", "/min"), ("29463-7", "Body weight", "kg"), ("8480-6", "Systolic BP", "mm[Hg]"),
         ("2339-0", "Glucose", "mg/dL"), ("8310-5", "Body temperature", "Cel"), ("39156-5", "BMI", "kg/m2")]
DOC_TYPES = [("application/pdf", "34133-9"), ("image/jpeg", "18748-4"), ("text/plain", "11506-3")]
MEDIA_TYPES = ["image/png", "video/mp4", "audio/mpeg", "image/jpeg"]
CTX = RequestContext("http://bench.invalid/fhir/R4", SystemPrincipal("benchmark"))


def day(rng: random.Random) -> str:
    return f"{rng.randint(2015, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def patient(rng: random.Random, i: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{i}", "active": rng.random() < 0.9,
            "identifier": [{"system": "urn:mrn", "value": f"MRN{i:07d}"}],
            "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN)]}],
            "gender": rng.choice(["male", "female", "other"]), "birthDate": f"{rng.randint(1930, 2020)}-"
            f"{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "address": [{"city": rng.choice(["Bern", "Zürich", "Genève", "Basel"]), "country": "CH"}]}


def encounter(rng: random.Random, i: int, patients: int) -> dict[str, Any]:
    start = day(rng)
    return {"resourceType": "Encounter", "id": f"e{i}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": rng.choice(["AMB", "IMP"])},
            "subject": {"reference": f"Patient/p{rng.randrange(patients)}"},
            "period": {"start": start, "end": start}}


def observation(rng: random.Random, i: int, patients: int, encounters: int) -> dict[str, Any]:
    code, text, unit = rng.choice(LOINC)
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}], "text": text},
            "subject": {"reference": f"Patient/p{rng.randrange(patients)}"},
            "encounter": {"reference": f"Encounter/e{rng.randrange(max(1, encounters))}"},
            "effectiveDateTime": f"{day(rng)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
            "valueQuantity": {"value": round(rng.uniform(30, 200), 1), "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}}


def document(rng: random.Random, i: int, patients: int) -> dict[str, Any]:
    ctype, loinc = rng.choice(DOC_TYPES)
    return {"resourceType": "DocumentReference", "id": f"d{i}", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": {"reference": f"Patient/p{rng.randrange(patients)}"}, "date": f"{day(rng)}T12:00:00Z",
            "content": [{"attachment": {"contentType": ctype, "size": rng.randint(1, 10**7),
                                        "title": f"doc{i}"}}]}


def media(rng: random.Random, i: int, patients: int) -> dict[str, Any]:
    return {"resourceType": "Media", "id": f"m{i}", "status": "completed",
            "subject": {"reference": f"Patient/p{rng.randrange(patients)}"}, "createdDateTime": day(rng),
            "content": {"contentType": rng.choice(MEDIA_TYPES), "title": f"media{i}"}}


def population(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    counts = {"p": n // 10, "e": n // 5, "o": n // 2, "d": n // 10}
    counts["m"] = n - sum(counts.values())
    out = [patient(rng, i) for i in range(counts["p"])]
    out += [encounter(rng, i, counts["p"]) for i in range(counts["e"])]
    out += [observation(rng, i, counts["p"], counts["e"]) for i in range(counts["o"])]
    out += [document(rng, i, counts["p"]) for i in range(counts["d"])]
    out += [media(rng, i, counts["p"]) for i in range(counts["m"])]
    return out


async def load(settings: Settings, items: list[dict[str, Any]]) -> float:
    """Writes `items` through ResourceService (indexing included), 500 per transaction; seconds taken."""
    vault = FhirVault(settings)
    await vault.db.migrate()
    start = time.perf_counter()
    for at in range(0, len(items), 500):
        chunk = items[at:at + 500]

        async def work(uow: UnitOfWork, chunk: list[dict[str, Any]] = chunk) -> None:
            for r in chunk:
                await vault.resources.create_in(uow, CTX, r["resourceType"], r, rid=r["id"])

        await vault.resources.in_transaction(CTX, work)
    took = time.perf_counter() - start
    await vault.stop()
    return took


async def create_cost(settings: Settings, count: int) -> tuple[float, float, float, float]:
    """Seconds per create (one transaction each) of an Observation, with the index and without it: wall
    time, then this process's CPU time (on SQLite all of the work; on PostgreSQL the client side only).
    Each is the best of two alternating rounds, so that other load on the machine counts least."""
    vault = FhirVault(settings)
    await vault.db.migrate()
    rng = random.Random(3)
    body = observation(rng, 0, 1000, 1000)
    body.pop("id")
    real = search_index_module.search_index
    out = []
    try:
        for indexing in (True, False, True, False):
            # resources.py bound search_index at import; swap the name it calls
            import fhirvault.service.resources as svc

            svc.search_index = real if indexing else (lambda *args: None)  # type: ignore[assignment,return-value]
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                await vault.resources.create(CTX, "Observation", body)
            out.append((indexing, (time.perf_counter() - start) / count, (time.process_time() - cpu) / count))
    finally:
        import fhirvault.service.resources as svc

        svc.search_index = real
        await vault.stop()
    return (min(t for i, t, _c in out if i), min(t for i, t, _c in out if not i),
            min(c for i, _t, c in out if i), min(c for i, _t, c in out if not i))


async def analyze(settings: Settings) -> None:
    """Planner statistics after the bulk load, as a database in service has them: the server gathers them
    at start and as the data grows (Database.refresh_statistics)."""
    vault = FhirVault(settings)
    try:
        await vault.db.refresh_statistics()
    finally:
        await vault.stop()


async def sizes(settings: Settings) -> tuple[int, int, int, int]:
    """(bytes of the resources table with its indexes, bytes of all search index tables with theirs (and,
    on SQLite, the resources' owner index, which only searches use),
    rows of the index tables, word rows of `_text` / `_content` among them)."""
    vault = FhirVault(settings)
    try:
        async with vault.db.read() as conn:
            index_names = [t.name for t in INDEX_TABLES]
            if vault.db.is_sqlite:
                async def size(name: str) -> int:
                    q = sa.text("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN "
                                "(SELECT name FROM sqlite_master WHERE tbl_name = :n)")
                    return int((await conn.execute(q, {"n": name})).scalar() or 0)
            else:
                async def size(name: str) -> int:
                    q = sa.text("SELECT pg_total_relation_size(CAST(:n AS regclass))")
                    return int((await conn.execute(q, {"n": name})).scalar() or 0)
            table = await size(resources_table.name)
            index = sum([await size(n) for n in index_names])
            if vault.db.is_sqlite:
                # the resources' owner index serves searches only (store/sqlite_index_layout.py): it counts
                # as index, not as resource table
                q = sa.text("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = :n")
                owner = int((await conn.execute(q, {"n": RESOURCES_OWNER_INDEX})).scalar() or 0)
                table, index = table - owner, index + owner
            rows = 0
            for t in INDEX_TABLES:
                rows += int((await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar() or 0)
            words = int((await conn.execute(sa.select(sa.func.count()).select_from(search_strings).where(
                search_strings.c.param.in_(TEXT_PARAMS)))).scalar() or 0)
    finally:
        await vault.stop()
    return table, index, rows, words


def queries(n: int) -> list[tuple[str, str, dict[str, str]]]:
    p = n // 10
    return [
        ("name", "/Patient", {"name": "garc"}),
        ("identifier", "/Patient", {"identifier": f"urn:mrn|MRN{p // 2:07d}"}),
        ("birthdate range", "/Patient", {"birthdate": "ge1990-01-01", "gender": "female", "_count": "20"}),
        ("code+date", "/Observation", {"code": "http://loinc.org|29463-7", "date": "ge2024-06"}),
        ("patient+code", "/Observation", {"patient": f"Patient/p{p // 3}", "code": "8867-4"}),
        ("patient+type", "/DocumentReference", {"patient": f"p{p // 4}", "contenttype": "application/pdf"}),
        ("value-quantity", "/Observation", {"code": "2339-0", "value-quantity": "gt190"}),
        ("chained", "/Observation", {"subject:Patient.identifier": f"urn:mrn|MRN{p // 5:07d}"}),
        ("_include", "/Observation", {"patient": f"Patient/p{p // 6}", "_include": "Observation:subject"}),
        ("_sort", "/Encounter", {"class": "IMP", "_sort": "-date", "_count": "10"}),
        ("_summary=count", "/Observation", {"code": "8310-5", "_summary": "count"}),
        ("media type", "/Media", {"patient": f"Patient/p{p // 7}", "_sort": "-created"}),
    ]


def server_cpu(pids: list[int]) -> float:
    """Seconds of CPU (user and system) that the processes `pids` have used so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(client: httpx.Client, path: str, params: dict[str, str], repeats: int,
          pids: list[int]) -> tuple[float, float, float]:
    """(p50, p95) of the request's wall time and the server's mean CPU time per request, in ms. The CPU
    time counts only the server's own work, so that other load on the machine changes it least."""
    client.get(path, params=params).raise_for_status()  # warm
    samples = []
    cpu = server_cpu(pids)
    for _ in range(repeats):
        start = time.perf_counter()
        r = client.get(path, params=params)
        samples.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    cpu = (server_cpu(pids) - cpu) / repeats * 1000
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))], cpu


def rest_create_cost(data_dir: Path, env: dict[str, Any], count: int,
                     rounds: int = 6) -> tuple[float, float, float, float]:
    """A REST create (`POST /Observation`, one at a time, as a client sees it: HTTP, token, validation,
    storage) with the search index and without it, on the same database: two servers on `data_dir`, one
    of them started with bench/no_index on PYTHONPATH (it writes no index rows), taking turns for `rounds`
    rounds of `count` creates each. Medians of the rounds, in seconds per create: client wall time with,
    without, then server CPU time with, without."""
    no_index = {**settings_env(**env), "PYTHONPATH": str(Path(__file__).resolve().parent / "no_index")}
    servers: dict[bool, ServerProcess] = {}
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    body = observation(random.Random(5), 0, 1000, 1000)
    body.pop("id")
    # alike but for one identifier, by which the index finds what each server created
    bodies = {k: {**body, "identifier": [{"system": "urn:bench", "value": "indexed" if k else "unindexed"}]}
              for k in (True, False)}
    try:
        servers[True] = ServerProcess(data_dir, settings_env(**env), workers=1).start(timeout=600)
        servers[False] = ServerProcess(data_dir, no_index, workers=1).start(timeout=600)
        fhir_json = {"Content-Type": "application/fhir+json"}
        clients = {k: httpx.Client(base_url=s.base, headers={**s.auth_headers(), **fhir_json}, timeout=120)
                   for k, s in servers.items()}
        for n in range(rounds + 1):  # round 0 warms both up and is not counted
            for indexing in ((True, False) if n % 2 == 0 else (False, True)):
                pids = servers[indexing].pids()
                start, used = time.perf_counter(), server_cpu(pids)
                for _ in range(count):
                    clients[indexing].post("/Observation", json=bodies[indexing]).raise_for_status()
                if n:
                    wall[indexing].append((time.perf_counter() - start) / count)
                    cpu[indexing].append((server_cpu(pids) - used) / count)
        with servers[True].api() as api:  # what each server created, as the index finds it
            found = {k: api.get("/Observation", params={"identifier": f"urn:bench|{k}", "_summary": "count"}
                                ).json()["total"] for k in ("indexed", "unindexed")}
        for client in clients.values():
            client.close()
    finally:
        for server in servers.values():
            server.stop()
    assert found == {"indexed": (rounds + 1) * count, "unindexed": 0}, found
    med = statistics.median
    return med(wall[True]), med(wall[False]), med(cpu[True]), med(cpu[False])


def run_backend(backend: str, n: int, repeats: int, create_samples: int, text_index: bool = True) -> None:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        env: dict[str, Any] = {"log_level": "warning", "search_text_index": text_index}
        if backend == "postgres":
            env["database_url"] = stack.enter_context(postgres_database())
        settings = Settings(data_dir=Path(tmp), **{k: v for k, v in env.items() if k != "log_level"})
        items = population(n)
        took = asyncio.run(load(settings, items))
        print(f"\n== {backend}, text index {'on' if text_index else 'off'}: {len(items)} resources loaded in "
              f"{took:.0f} s ({len(items) / took:.0f}/s); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        asyncio.run(analyze(settings))
        # sizes of the loaded population alone, before create_cost adds its Observations
        table, index, rows, words = asyncio.run(sizes(settings))
        with_index, without, cpu_with, cpu_without = asyncio.run(create_cost(settings, create_samples))
        rest = rest_create_cost(Path(tmp), env, max(20, create_samples // 5))
        server = ServerProcess(Path(tmp), settings_env(**env)).start(timeout=600)
        stack.callback(server.stop)
        pids = server.pids()
        with httpx.Client(base_url=server.base, headers=server.auth_headers(), timeout=120) as client:
            read_p50, read_p95, read_cpu = timed(client, "/Patient/p1", {}, repeats, pids)
            print(f"{'read by id':22} p50 {read_p50:7.1f} ms  p95 {read_p95:7.1f} ms  "
                  f"server CPU {read_cpu:6.2f} ms  (reference)")
            ratios, cpu_ratios = [], []
            for name, path, params in queries(n):
                p50, p95, cpu = timed(client, path, params, repeats, pids)
                ratios.append(p50 / read_p50)
                cpu_ratios.append(cpu / read_cpu)
                print(f"{name:22} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  {p50 / read_p50:5.1f} x read  "
                      f"server CPU {cpu:6.2f} ms  {cpu / read_cpu:5.1f} x read")
        print(f"typical search (median of the 12 p50s): {statistics.median(ratios):.1f} x read by id (target <= 5)")
        print(f"typical search by server CPU (median of the 12): {statistics.median(cpu_ratios):.1f} x read by id")
        print(f"index size {index / 2**20:.1f} MiB vs resources table {table / 2**20:.1f} MiB: "
              f"{index / table:.2f} x (target <= 2); {rows} index rows, {words} of them words of _text/_content")
        print(f"create with index {with_index * 1000:.2f} ms, without {without * 1000:.2f} ms: "
              f"{with_index / without:.2f} x (target <= 1.3)")
        side = "" if backend == "sqlite" else ", client side only"
        print(f"create CPU with index {cpu_with * 1000:.2f} ms, without {cpu_without * 1000:.2f} ms{side}: "
              f"{cpu_with / cpu_without:.2f} x")
        print(f"REST create (POST /Observation, one at a time) with index {rest[0] * 1000:.2f} ms, without "
              f"{rest[1] * 1000:.2f} ms: {rest[0] / rest[1]:.2f} x (target <= 1.3); server CPU with "
              f"{rest[2] * 1000:.2f} ms, without {rest[3] * 1000:.2f} ms: {rest[2] / rest[3]:.2f} x")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--backend", default="sqlite,postgres")
    parser.add_argument("--text-index", default="off",
                        help="on, off or on,off: SEARCH_TEXT_INDEX of each run (off: the server's default)")
    args = parser.parse_args()
    for backend in args.backend.split(","):
        if backend == "postgres" and not postgres_available():
            print("PostgreSQL at 127.0.0.1:5432 is not reachable: skipped")
            continue
        for text in args.text_index.split(","):
            if text not in ("on", "off"):
                parser.error(f"--text-index takes on, off or on,off, not {text!r}")
            run_backend(backend, args.resources, args.repeats, args.creates, text == "on")


if __name__ == "__main__":
    main()
