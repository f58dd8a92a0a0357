"""PATCH and conditional interactions from clients others wrote: fhirpy (PyPI) and MedplumClient (npm)."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.support.server import ServerProcess
from tests.test_interop_medplum import JS_DIR, node_or_skip


def test_fhirpy_patch_and_conditional_save(server: ServerProcess) -> None:
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import MultipleResourcesFound

    client = SyncFHIRClient(server.base, authorization=server.auth_headers()["Authorization"])
    mrn = uuid.uuid4().hex
    patient = client.resource("Patient", gender="female", identifier=[{"system": "urn:mrn", "value": mrn}])
    patient.save()
    # patch(): a JSON object sent as application/json, applied as a merge patch
    patched = client.patch("Patient", patient.id, birthDate="1999-09-09", gender=None)
    assert patched["birthDate"] == "1999-09-09" and "gender" not in patched
    assert patched["meta"]["versionId"] == "2"
    # resource.patch() patches the stored resource with the given elements
    patient.patch(active=True)
    stored = client.reference("Patient", patient.id).to_resource()
    assert stored["active"] is True and stored["birthDate"] == "1999-09-09"
    # conditional patch and conditional update through a search set
    search = client.resources("Patient").search(identifier=f"urn:mrn|{mrn}")
    assert search.patch(active=False)["id"] == patient.id
    resource = client.resource("Patient", identifier=[{"system": "urn:mrn", "value": mrn}], gender="other")
    updated, created = search.update(resource)
    assert (updated["id"], created) == (patient.id, False)
    other = uuid.uuid4().hex
    made, created = client.resources("Patient").search(identifier=f"urn:mrn|{other}").update(
        client.resource("Patient", identifier=[{"system": "urn:mrn", "value": other}]))
    assert created is True and made["id"] != patient.id
    client.resource("Patient", identifier=[{"system": "urn:mrn", "value": mrn}]).save()
    with pytest.raises(MultipleResourcesFound):
        search.patch(active=True)


def test_medplum_patch_resource_and_upsert_resource(server: ServerProcess) -> None:
    node = node_or_skip()
    client = server.create_client("medplum-patch", "system/*.cruds")
    done = subprocess.run([node, str(JS_DIR / "medplum_patch.mjs"), server.url, client["client_id"],
                           client["client_secret"], uuid.uuid4().hex],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stderr}\n--- server log ---\n{server.log()}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["patchedVersion"], out["patchedGender"], out["patchedBirthDate"]) == ("2", "male", "1980-04-05")
    assert out["failedPatch"] == "processing"  # the 422 OperationOutcome of a failed test op reached the client
    assert out["upsertSameId"] is True
    assert out["upsertVersions"] == ["1", "2"]
    assert out["upsertActive"] is True


def test_fhirpy_conditional_create_with_criteria_in_the_url(server: ServerProcess) -> None:
    """fhirpy's get_or_create() and resource.create(**criteria) send POST [type]?criteria."""
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(server.base, authorization=server.auth_headers()["Authorization"])
    mrn = uuid.uuid4().hex
    ident = [{"system": "urn:mrn", "value": mrn}]
    search = client.resources("Patient").search(identifier=f"urn:mrn|{mrn}")
    first, created = search.get_or_create(client.resource("Patient", identifier=ident))
    assert created is True
    again, created = search.get_or_create(client.resource("Patient", identifier=ident, gender="male"))
    assert (again["id"], created) == (first["id"], False) and "gender" not in again
    made = client.resource("Patient", identifier=ident).create(identifier=f"urn:mrn|{mrn}")
    assert made.id == first["id"]
    assert len(search.fetch_all()) == 1
