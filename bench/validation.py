"""The cost of R4 validation: create requests per second of a 2 KiB Observation with validation on
and off (two servers, same run, phases interleaved), the server CPU time per create (which a
machine shared with other work disturbs less than the wall clock), and the time to validate one
1 MiB Bundle.

Prints figures and ratios; asserts nothing. Target: validation adds at most 25 % to a create.
Run: .venv/bin/python bench/validation.py [--seconds 8] [--rounds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhirvault.fhir.validation import bundle_invariant_issues, validate_resource, warm_up  # noqa: E402
from tests.support.server import ServerProcess, settings_env  # noqa: E402

COMPONENT = {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
             "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}


NARRATIVE = ('<div xmlns="http://www.w3.org/1999/xhtml"><p>Blood pressure <b>107/60 mmHg</b>, sitting, '
             'left arm</p><table><tr><th>Systolic</th><td>107 mmHg</td></tr><tr><th>Diastolic</th>'
             '<td>60 mmHg</td></tr></table></div>')


def observation(target_bytes: int = 2048) -> dict[str, Any]:
    """A blood-pressure Observation grown with components to about `target_bytes` of JSON."""
    obs: dict[str, Any] = {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}],
                 "text": "Blood pressure"},
        "subject": {"reference": "Patient/example"}, "effectiveDateTime": "2024-09-17T10:30:00Z",
        "performer": [{"reference": "Practitioner/example"}], "component": [],
    }
    while len(json.dumps(obs)) < target_bytes:
        obs["component"].append(COMPONENT)
    return obs


async def creates_per_second(base: str, headers: dict[str, str], body: dict[str, Any], concurrency: int,
                             seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=30, headers={**headers, "Content-Type": "application/fhir+json",
                                                          "Prefer": "return=minimal"}) as client:
            while time.perf_counter() < stop_at:
                r = await client.post(f"{base}/Observation", json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"create answered {r.status_code}: {r.text[:300]}")
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick
        todo.extend(children.get(p, []))
    return total


def best_seconds(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    obs = observation()
    print(f"Observation: {len(json.dumps(obs))} bytes of JSON")

    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}  # server CPU seconds per create
    with ExitStack() as stack:
        servers = {}
        for enabled in (True, False):
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            server = ServerProcess(Path(tmp), settings_env(log_level="warning", validation_enabled=enabled)).start()
            stack.callback(server.stop)
            servers[enabled] = (server, server.auth_headers())
        for _ in range(args.rounds):  # interleaved, so that machine noise falls on both alike
            for enabled in (True, False):
                server, headers = servers[enabled]
                assert server.proc is not None
                before = cpu_seconds(server.proc.pid)
                rate = asyncio.run(creates_per_second(server.base, headers, obs, args.concurrency, args.seconds))
                rates[enabled].append(rate)
                cpu[enabled].append((cpu_seconds(server.proc.pid) - before) / (rate * args.seconds))
    on, off = max(rates[True]), max(rates[False])
    print(f"create/s, validation on : {on:8.0f}   (rounds: {', '.join(f'{r:.0f}' for r in rates[True])})")
    print(f"create/s, validation off: {off:8.0f}   (rounds: {', '.join(f'{r:.0f}' for r in rates[False])})")
    print(f"validation on / off = {on / off:.3f}  -> validation adds {(off / on - 1) * 100:.1f} % time per create "
          "(target <= 25 %)")
    cpu_on, cpu_off = min(cpu[True]), min(cpu[False])
    print(f"server CPU per create: on {cpu_on * 1e3:.2f} ms, off {cpu_off * 1e3:.2f} ms -> on / off = "
          f"{cpu_on / cpu_off:.3f} (validation adds {(cpu_on / cpu_off - 1) * 100:.1f} % CPU per create)")

    warm_up()
    per_obs = best_seconds(lambda: [validate_resource(obs) for _ in range(1000)], args.rounds) / 1000
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": []}
    while len(json.dumps(bundle)) < 1024 * 1024:
        bundle["entry"].append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{len(bundle['entry']):012d}",
                                "resource": obs})
    assert validate_resource(bundle) == []
    whole = best_seconds(lambda: validate_resource(bundle), args.rounds)
    invariants = best_seconds(lambda: bundle_invariant_issues(bundle), args.rounds)
    narrated = {**obs, "text": {"status": "generated", "div": NARRATIVE}}
    assert validate_resource(narrated) == []
    per_narrated = best_seconds(lambda: [validate_resource(narrated) for _ in range(1000)], args.rounds) / 1000
    print(f"validate one {len(json.dumps(obs))} B Observation: {per_obs * 1e6:.0f} us")
    print(f"validate it with a {len(NARRATIVE)} B narrative: {per_narrated * 1e6:.0f} us "
          f"(txt-1/txt-2 add {(per_narrated - per_obs) * 1e6:.0f} us)")
    print(f"validate one {len(json.dumps(bundle)) / 1024 / 1024:.2f} MiB Bundle ({len(bundle['entry'])} entries): "
          f"{whole * 1e3:.0f} ms, of which the bdl-* FHIRPath invariants {invariants * 1e3:.0f} ms "
          f"(= {invariants / whole:.2f} of it); per entry {whole / len(bundle['entry']) * 1e6:.0f} us "
          f"= {whole / len(bundle['entry']) / per_obs:.2f} x one Observation alone")


if __name__ == "__main__":
    main()
