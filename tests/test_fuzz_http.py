"""A bounded, seeded fuzz of the HTTP surface (hypothesis): paths and ids, search parameters of every kind,
Range headers, bodies (JSON resources, Bundles, Parameters, base64, raw bytes), headers (Content-Type,
Content-Encoding, If-Match, X-Security-Context, ...) and FHIRPath `path`s. Every answer must be below
500, no connection may drop, and the server must still answer afterwards.

FUZZ_EXAMPLES sets the number of requests (default 600, a minute or two); the seed is fixed, so a
failure replays the same way."""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from tests.support.server import ServerProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600"))
FHIR_JSON = "application/fhir+json"

TYPES = ["Patient", "Observation", "Binary", "DocumentReference", "Media", "Bundle", "Parameters", "Nope", "patient"]
SEARCH_NAMES = ["_id", "_count", "_offset", "_lastUpdated", "_since", "_sort", "_summary", "_total", "_format",
                "_include", "_elements", "identifier", "patient", "subject", "code", "date", "value-quantity",
                "name", "birthdate", "gender", "_has:Observation:subject:code", "subject:Patient", "path",
                "_output", "_filename", "access_token", "_pretty", "status"]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]

# Text that has broken servers: digits that are not ASCII, separators, dots, controls, huge numbers.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["²", "١٢", "..", ".", "%2e%2e", "x\n", "\r\n", "\x00", "9" * 30, "9" * 5000, "-1", "1e999",
                     "NaN", "Infinity", "a,b,c", "\\,", "|", "Patient/1", "Patient/", "/", "*", "..%2f"]),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
)
dates = st.one_of(
    st.dates().map(str),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["9999-12-31T23:59:59-14:00", "0000-01-01", "2024-13-01", "2024-02-30", "2024", "2024-01",
                     "2024-01-01T25:00:00Z", "10000-01-01"]),
)
values = st.one_of(
    nasty_text,
    st.tuples(st.sampled_from(PREFIXES), dates).map("".join),
    st.lists(nasty_text, min_size=1, max_size=30).map(",".join),
    st.tuples(nasty_text, nasty_text).map("|".join),
    st.builds(lambda i, rest: f"DocumentReference.content[{i}].attachment{rest}",
              st.integers(min_value=-5, max_value=10**22), st.sampled_from(["", ".url", "[0]", "..", "()"])),
)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)), max_leaves=20)


@st.composite
def resources(draw: st.DrawFn) -> Any:
    rtype = draw(st.sampled_from(TYPES))
    body: dict[str, Any] = {"resourceType": rtype}
    fields = {
        "id": nasty_text, "status": st.sampled_from(["final", "current", "completed", 5, None]),
        "subject": st.one_of(st.fixed_dictionaries({"reference": nasty_text}), json_values),
        "contentType": st.one_of(nasty_text, st.sampled_from(["text/html", "image/png", "text/plain; charset=x"])),
        "data": st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), nasty_text),
        "securityContext": st.fixed_dictionaries({"reference": nasty_text}),
        "content": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"attachment": st.fixed_dictionaries({"url": nasty_text, "contentType": nasty_text})}), max_size=2)),
        "entry": st.one_of(json_values, st.lists(st.fixed_dictionaries({
            "request": st.fixed_dictionaries({"method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "X"]),
                                              "url": nasty_text}),
            "resource": json_values}), max_size=3)),
        "type": st.sampled_from(["batch", "transaction", "searchset", 1]),
        "parameter": st.one_of(json_values, st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["path", "x"]), "valueString": values}), max_size=2)),
        "extra": json_values,
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True)):
        body[name] = draw(fields[name])
    return body


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["valid", "valid", "resource", "json", "raw", "none", "tricky"]))
    if kind == "valid":  # well-formed, with fuzzed values where FHIR allows free text
        return json.dumps(draw(st.sampled_from([
            {"resourceType": "Patient", "identifier": [{"system": draw(nasty_text), "value": draw(nasty_text)}]},
            {"resourceType": "Observation", "status": "final", "code": {"text": draw(nasty_text)},
             "subject": {"reference": draw(st.sampled_from(["Patient/1", draw(nasty_text)]))}},
            {"resourceType": "Binary", "contentType": draw(st.sampled_from(["text/plain", draw(header_text)])),
             "data": base64.b64encode(draw(st.binary(max_size=100))).decode()},
            {"resourceType": "Parameters", "parameter": [{"name": "path", "valueString": draw(values)}]},
            {"resourceType": "Bundle", "type": draw(st.sampled_from(["batch", "transaction"])), "entry": [
                {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
                {"request": {"method": "GET", "url": draw(st.sampled_from(["Patient?_count=1", draw(nasty_text)]))}}]},
        ]))).encode(), FHIR_JSON
    if kind == "resource":
        return json.dumps(draw(resources())).encode(), FHIR_JSON
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), FHIR_JSON
    if kind == "raw":
        return draw(st.binary(max_size=300)), None
    if kind == "tricky":
        return draw(st.sampled_from([
            b'{"resourceType":"Patient","x":NaN}', b'{"resourceType":"Patient","a":1,"a":2}',
            b'{"resourceType":"Patient","x":' + b"[" * 3000 + b"]" * 3000 + b"}", b"\xff\xfe", b"{", b"[]", b'""',
            b'{"resourceType":"Binary","contentType":"text/plain","data":"####"}',
            rb'{"resourceType":"Patient","id":"\ud800"}',
            b'{"resourceType":"Observation","valueInteger":' + b"9" * 5000 + b"}"])), FHIR_JSON
    return b"", None


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=60)
ranges = st.one_of(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 10**20)), st.one_of(st.none(), st.integers(0, 10**20))),
             min_size=1, max_size=70).map(
        lambda rs: "bytes=" + ",".join(f"{a if a is not None else ''}-{b if b is not None else ''}" for a, b in rs)),
    header_text,
)


@st.composite
def headers(draw: st.DrawFn, body_type: str | None) -> dict[str, bytes]:
    options: dict[str, st.SearchStrategy[str]] = {
        "Content-Type": st.one_of(st.sampled_from([FHIR_JSON, "application/json", "text/html", "image/svg+xml",
                                                   "application/x-www-form-urlencoded", "multipart/form-data",
                                                   "application/json-patch+json", "text/plain; charset=utf-8"]),
                                  header_text),
        "Content-Encoding": st.one_of(st.sampled_from(["gzip", "identity", "br", "x-gzip", "deflate"]), header_text),
        "If-Match": st.one_of(st.builds(lambda v: f'W/"{v}"', nasty_text), header_text),
        "If-None-Match": st.one_of(st.just("*"), header_text), "If-None-Exist": values,
        "Range": ranges, "If-Range": header_text, "X-Security-Context": st.one_of(nasty_text, header_text),
        "Accept": st.one_of(st.sampled_from([FHIR_JSON, "*/*", "text/html", "image/png"]), header_text),
        "Prefer": st.sampled_from(["return=minimal", "return=OperationOutcome", "handling=strict", "x"]),
        "Content-Disposition": header_text,
    }
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True))
    out = {name: draw(options[name]) for name in chosen}
    if body_type and "Content-Type" not in out:
        out["Content-Type"] = body_type
    return {k: header_bytes(v) for k, v in out.items()}


def header_bytes(value: str) -> bytes:
    """`value` as a header field value HTTP/1.1 can carry (CR, LF and NUL are framing, tested elsewhere
    byte for byte): Latin-1, other characters as "?", control characters and outer blanks dropped."""
    return bytes(b for b in value.encode("latin-1", "replace") if b >= 0x20 and b != 0x7F).strip(b" \t")


@pytest.fixture(scope="module")
def fuzz_target(server_factory: Callable[..., ServerProcess]) -> tuple[ServerProcess, dict[str, str]]:
    server = server_factory("sqlite", inline_max_bytes=16, ingest_enabled=False)
    with server.api() as api:
        created = api.post("/Binary", content=b"0123456789" * 10, headers={"Content-Type": "text/plain"})
        binary = created.json()
        doc = api.post("/DocumentReference", headers={"Content-Type": FHIR_JSON}, json={
            "resourceType": "DocumentReference", "status": "current", "content": [
                {"attachment": {"contentType": "text/plain", "url": f"Binary/{binary['id']}"}}]}).json()
        patient = api.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON}).json()
    signed = created.links["alternate"]["url"][len(server.url):]
    return server, {"binary": binary["id"], "doc": doc["id"], "patient": patient["id"], "signed": signed}


@st.composite
def requests(draw: st.DrawFn, known: dict[str, str]) -> tuple[str, str, list[tuple[str, str]], dict[str, bytes], bytes]:
    rtype = draw(st.sampled_from(TYPES))
    rid = draw(st.one_of(st.sampled_from([known["binary"], known["doc"], known["patient"]]), nasty_text))
    vid = draw(st.one_of(st.sampled_from(["1", "2"]), nasty_text))
    enc = lambda s: quote(s, safe="")  # noqa: E731 - a short local alias
    r, i, v = enc(rid), f"/fhir/R4/{rtype}/{enc(rid)}", enc(vid)
    # Each path with the methods it answers; now and then any other method (405 must stay a 405).
    path, methods = draw(st.sampled_from([
        (f"/fhir/R4/{rtype}", "GET POST"), (i, "GET PUT DELETE"), (f"{i}/_history/{v}", "GET"),
        (f"/fhir/R4/{rtype}/_history", "GET"), ("/fhir/R4/_history", "GET"), (f"/fhir/R4/{rtype}/_search", "POST"),
        ("/fhir/R4", "POST"), (f"{i}/$binary-access-read", "GET POST"), (f"{i}/$binary-access-write", "POST"),
        (f"{i}/$ingestion-status", "GET"), (f"/fhir/R4/Binary/{r}", "GET PUT"), ("/fhir/R4/Binary", "POST"),
        (f"/fhir/R4/Binary/{r}/_history/{v}/$binary-access-read", "GET"), (f"/fhir/R4/Media/{r}", "GET"),
        (f"/storage/{r}/{v}", "GET OPTIONS"), (known["signed"].split("?")[0], "GET"), ("/fhir/R4/metadata", "GET"),
        ("/oauth2/token", "POST"), (f"/fhir/R4/DocumentReference/{known['doc']}/$binary-access-read", "GET POST"),
    ]))
    if draw(st.integers(0, 9)) == 0:
        methods = "GET HEAD POST PUT DELETE PATCH OPTIONS"
    method = draw(st.sampled_from(methods.split()))
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(SEARCH_NAMES), nasty_text), values), max_size=6))
    if path == known["signed"].split("?")[0] and draw(st.booleans()):
        query = [tuple(p.split("=", 1)) for p in known["signed"].split("?")[1].split("&")] + query  # type: ignore[misc]
    body, body_type = draw(bodies()) if method in ("POST", "PUT", "PATCH") else (b"", None)
    hdrs = draw(headers(body_type))
    if hdrs.get("Content-Encoding", b"").strip().lower() in (b"gzip", b"x-gzip") and draw(st.booleans()):
        body = gzip.compress(body)
    return method, path, query, hdrs, body


def test_fuzzed_requests_never_get_5xx_or_a_dropped_connection(
        fuzz_target: tuple[ServerProcess, dict[str, str]]) -> None:
    server, known = fuzz_target
    auth = server.auth_headers()["Authorization"].encode()
    seen: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:

        @seed(20261130)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one(data: st.DataObject) -> None:
            method, path, query, hdrs, body = data.draw(requests(known))
            note(f"{method} {path} {query} {hdrs} {body[:200]!r}")
            request = client.build_request(method, path, params=query, headers={"Authorization": auth, **hdrs},
                                           content=body)
            try:
                response = client.send(request)
            except httpx.TransportError as exc:
                raise AssertionError(f"the connection failed: {type(exc).__name__}: {exc}") from None
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, response.text[:500]

        one()
        print(f"fuzz: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
        assert client.get("/fhir/R4/metadata").status_code == 200
        assert client.get(f"/fhir/R4/Patient/{known['patient']}",
                          headers={"Authorization": auth}).status_code in (200, 410)
