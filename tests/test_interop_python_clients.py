"""Interoperability with FHIR clients others wrote: fhirpy and fhirclient from PyPI."""

from __future__ import annotations

import uuid

from tests.support.server import ServerProcess


def test_fhirpy_crud_and_search(server: ServerProcess) -> None:
    from fhirpy import SyncFHIRClient

    headers = server.auth_headers()
    client = SyncFHIRClient(server.base, authorization=headers.get("Authorization"))
    mrn = uuid.uuid4().hex
    patient = client.resource("Patient", name=[{"family": "Interop", "given": ["Py"]}],
                              identifier=[{"system": "urn:mrn", "value": mrn}])
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    patient["active"] = True
    patient.save()
    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["active"] is True and fetched["meta"]["versionId"] == "2"
    found = client.resources("Patient").search(identifier=f"urn:mrn|{mrn}").fetch_all()
    assert [p.id for p in found] == [patient.id]
    obs = client.resource("Observation", status="final", code={"text": "weight"},
                          subject=patient.to_reference())
    obs.save()
    by_patient = client.resources("Observation").search(patient=patient.id).fetch()
    assert [o.id for o in by_patient] == [obs.id]
    obs.delete()
    assert client.resources("Observation").search(patient=patient.id).fetch() == []


def test_fhirpy_search_api(server: ServerProcess) -> None:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(server.base, authorization=server.auth_headers().get("Authorization"))
    family = f"Fhirpy{uuid.uuid4().hex[:10]}"
    patient = client.resource("Patient", name=[{"family": family}], birthDate="1980-05-01")
    patient.save()
    loinc = "http://loinc.org|29463-7"
    made = {}
    for day, kg in (("2024-01-01", 70), ("2025-03-04", 72), ("2025-06-01", 75)):
        o = client.resource("Observation", status="final", code={"coding": [{"system": "http://loinc.org",
                                                                              "code": "29463-7"}]},
                            subject=patient.to_reference(), effectiveDateTime=day,
                            valueQuantity={"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org",
                                           "code": "kg"})
        o.save()
        made[day] = o.id
    obs = client.resources("Observation").search(subject=patient.to_reference()["reference"])
    recent = obs.search(code=loinc, date__ge="2025-01-01").sort("-date").fetch_all()
    assert [o.id for o in recent] == [made["2025-06-01"], made["2025-03-04"]]
    assert [o.id for o in obs.search(value_quantity__gt=71).sort("date").fetch_all()] == \
        [made["2025-03-04"], made["2025-06-01"]]
    assert obs.search(code=loinc).count() == 3
    assert [p.id for p in client.resources("Patient").search(name=family.lower()).fetch_all()] == [patient.id]
    assert client.resources("Patient").search(name=f"Nobody{family}").fetch_all() == []
    assert client.resources("Patient").search(birthdate__lt="1981").search(name=family).fetch_all()[0].id \
        == patient.id
    with_patient = obs.search(date="2024").include("Observation", "subject").fetch_raw()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in with_patient["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation")]


def test_fhirclient_models_crud(server: ServerProcess) -> None:
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRServer

    fhir = FHIRServer(None, base_uri=server.base + "/")
    fhir.session.headers.update(server.auth_headers())
    p = Patient()
    name = HumanName()
    name.family = "Models"
    p.name = [name]
    created = p.create(fhir)
    assert created is not None and created["resourceType"] == "Patient"
    pid = created["id"]
    read = Patient.read(pid, fhir)
    assert read.name[0].family == "Models" and read.meta.versionId == "1"
    read.gender = "female"
    read.update(fhir)
    assert Patient.read(pid, fhir).gender == "female"
    found = list(Patient.where({"_id": pid}).perform_resources_iter(fhir))
    assert [r.id for r in found] == [pid]


def test_fhirclient_strict_models_parse_every_binary_answer(server: ServerProcess) -> None:
    """fhirclient parses strictly by default ("Superfluous entry" for anything R4 does not define): the
    answers to a raw upload, a JSON create, an update and a read of a Binary all parse; only a request in
    MedplumClient's extended mode gets the non-R4 `url`, which strict parsing would refuse."""
    import base64

    import pytest
    from fhirclient.models.binary import Binary
    from fhirclient.models.fhirabstractbase import FHIRValidationError
    from fhirclient.server import FHIRServer

    fhir = FHIRServer(None, base_uri=server.base + "/")
    fhir.session.headers.update(server.auth_headers())
    model = Binary()
    model.contentType = "text/plain"
    model.data = base64.b64encode(b"through fhirclient").decode()
    created = model.create(fhir)
    assert created is not None
    Binary(created)  # strict
    session = fhir.session
    raw = session.post(f"{server.base}/Binary", data=b"raw bytes", headers={"Content-Type": "image/png"})
    assert raw.status_code == 201
    parsed = Binary(raw.json())
    assert parsed.contentType == "image/png" and parsed.id
    updated = session.put(f"{server.base}/Binary/{parsed.id}", data=b"v2", headers={"Content-Type": "image/png"})
    assert Binary(updated.json()).meta.versionId == "2"
    read = Binary.read(parsed.id, fhir)
    assert base64.b64decode(read.data) == b"v2"
    extended = session.post(f"{server.base}/Binary", data=b"x", headers={"Content-Type": "image/png",
                                                                         "X-Medplum": "extended"})
    with pytest.raises(FHIRValidationError, match="url"):
        Binary(extended.json())
