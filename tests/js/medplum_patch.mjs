// Drives PATCH and conditional update of a fhirvault server with MedplumClient (@medplum/core).
// Usage: node medplum_patch.mjs <server-root-url> <client-id> <client-secret> <unique-tag>
// Prints one JSON object with what it observed; exits non-zero on any failure.
import { MedplumClient } from '@medplum/core';

const [root, clientId, clientSecret, tag] = process.argv.slice(2);
const base = root.endsWith('/') ? root : root + '/';
const medplum = new MedplumClient({
  baseUrl: base, fhirUrlPath: 'fhir/R4', tokenUrl: new URL('oauth2/token', base).toString(),
  fetch: globalThis.fetch, cacheTime: 0,
});
await medplum.startClientLogin(clientId, clientSecret);

const out = {};
const patient = await medplum.createResource({ resourceType: 'Patient', gender: 'female', name: [{ family: 'Patchy' }] });
// patchResource sends a JSON Patch (application/json-patch+json).
const patched = await medplum.patchResource('Patient', patient.id, [
  { op: 'test', path: '/gender', value: 'female' },
  { op: 'replace', path: '/gender', value: 'male' },
  { op: 'add', path: '/birthDate', value: '1980-04-05' },
]);
out.patchedVersion = patched.meta?.versionId;
out.patchedGender = patched.gender;
out.patchedBirthDate = patched.birthDate;
try {
  await medplum.patchResource('Patient', patient.id, [{ op: 'test', path: '/gender', value: 'female' }]);
  out.failedPatch = 'no error';
} catch (err) {
  out.failedPatch = err.outcome?.issue?.[0]?.code ?? String(err);
}

// upsertResource sends PUT [type]?criteria: the first call creates, the second updates the same resource.
const identifier = [{ system: 'urn:fhirvault:upsert', value: tag }];
const query = `identifier=urn:fhirvault:upsert|${tag}`;
const first = await medplum.upsertResource({ resourceType: 'Patient', identifier, active: false }, query);
const second = await medplum.upsertResource({ resourceType: 'Patient', identifier, active: true }, query);
out.upsertSameId = first.id === second.id;
out.upsertVersions = [first.meta?.versionId, second.meta?.versionId];
out.upsertActive = (await medplum.readResource('Patient', first.id)).active;
console.log(JSON.stringify(out));
