// Drives a fhirvault server with MedplumClient (@medplum/core) as a Medplum user would.
// Usage: node medplum_interop.mjs <server-root-url> <client-id> <client-secret>
// Prints one JSON object with what it observed; exits non-zero on any failure.
import { MedplumClient } from '@medplum/core';

const [root, clientId, clientSecret] = process.argv.slice(2);
const client = (options = {}) => new MedplumClient({
  baseUrl: root.endsWith('/') ? root : root + '/',
  fhirUrlPath: 'fhir/R4',
  tokenUrl: new URL('oauth2/token', root.endsWith('/') ? root : root + '/').toString(),
  fetch: globalThis.fetch,
  cacheTime: 0,
  ...options,
});
const medplum = client();

const out = {};
await medplum.startClientLogin(clientId, clientSecret);
out.loggedIn = medplum.getAccessToken() !== undefined;

const patient = await medplum.createResource({ resourceType: 'Patient', name: [{ family: 'Medplum', given: ['Interop'] }] });
out.patientId = patient.id;
out.patientVersion = patient.meta?.versionId;
const readBack = await medplum.readResource('Patient', patient.id);
out.readFamily = readBack.name?.[0]?.family;
const updated = await medplum.updateResource({ ...readBack, active: true });
out.updatedVersion = updated.meta?.versionId;
const found = await medplum.searchResources('Patient', { _id: patient.id });
out.searchCount = found.length;
const history = await medplum.readHistory('Patient', patient.id);
out.historyVersions = history.entry?.map((e) => e.resource?.meta?.versionId);
const first = await medplum.readVersion('Patient', patient.id, '1');
out.vreadActive = first.active ?? null;

// Conditional create: the second call finds the first resource instead of making another.
const identifier = [{ system: 'urn:fhirvault:interop', value: patient.id }];
const once = await medplum.createResourceIfNoneExist({ resourceType: 'Patient', identifier }, `identifier=urn:fhirvault:interop|${patient.id}`);
const twice = await medplum.createResourceIfNoneExist({ resourceType: 'Patient', identifier }, `identifier=urn:fhirvault:interop|${patient.id}`);
out.conditionalSameId = once.id === twice.id;

// A transaction whose Observation references the Patient it creates by urn:uuid.
const tx = await medplum.executeBatch({
  resourceType: 'Bundle', type: 'transaction',
  entry: [
    { fullUrl: 'urn:uuid:5b7e3c62-8f0a-4a0e-9d55-2f2b4b0c1a11', resource: { resourceType: 'Patient', name: [{ family: 'Tx' }] },
      request: { method: 'POST', url: 'Patient' } },
    { resource: { resourceType: 'Observation', status: 'final', code: { text: 'weight' },
      subject: { reference: 'urn:uuid:5b7e3c62-8f0a-4a0e-9d55-2f2b4b0c1a11' } }, request: { method: 'POST', url: 'Observation' } },
  ],
});
out.transactionStatuses = tx.entry?.map((e) => e.response?.status);
const txPatientId = tx.entry?.[0]?.resource?.id;
out.transactionReference = tx.entry?.[1]?.resource?.subject?.reference === `Patient/${txPatientId}`;

// Delete, then a read is an error carrying the server's OperationOutcome.
await medplum.deleteResource('Patient', twice.id);
try {
  await medplum.readResource('Patient', twice.id);
  out.readAfterDelete = 'no error';
} catch (err) {
  out.readAfterDelete = err.outcome?.issue?.[0]?.code ?? String(err);
}

// Binary upload the Medplum way, then an attachment on a Patient photo and a Communication.
const bytes = new Uint8Array(4096).map((_, i) => (i * 31) % 256);
const binary = await medplum.createBinary({ data: bytes, contentType: 'application/octet-stream', filename: 'noise.bin' });
out.binaryId = binary.id;
out.binaryUrl = binary.url;
const attachment = await medplum.createAttachment({ data: 'hello from medplum', contentType: 'text/plain', filename: 'hello.txt' });
out.attachmentUrl = attachment.url;
const withPhoto = await medplum.updateResource({ ...updated, photo: [attachment] });
out.photoUrlOnWrite = withPhoto.photo?.[0]?.url;
out.photoVersion = withPhoto.meta?.versionId;
const photoRead = await medplum.readResource('Patient', patient.id);
out.photoUrlOnRead = photoRead.photo?.[0]?.url;
out.photoSize = photoRead.photo?.[0]?.size;
const comm = await medplum.createResource({
  resourceType: 'Communication', status: 'completed', subject: { reference: `Patient/${patient.id}` },
  payload: [{ contentAttachment: attachment }],
});
out.communicationId = comm.id;
const commRead = await medplum.readResource('Communication', comm.id);
out.communicationUrl = commRead.payload?.[0]?.contentAttachment?.url;
const blob = await medplum.download(commRead.payload[0].contentAttachment.url);
out.downloadedText = await blob.text();
const rawBlob = await medplum.download(binary.url);
const raw = new Uint8Array(await rawBlob.arrayBuffer());
out.binaryRoundTrip = raw.length === bytes.length && raw.every((b, i) => b === bytes[i]);
// Read-modify-write of a Binary as the app got it (with the extended mode's `url`): it was refused
// ("Unknown element 'url' in Binary"); the bytes stay as they were.
const renamed = await medplum.updateResource({ ...binary, contentType: 'application/x-noise' });
out.binaryRewrittenType = renamed.contentType;
const rewrittenBlob = await medplum.download(renamed.url);
out.binaryRewrittenSize = (await rewrittenBlob.arrayBuffer()).byteLength;

// The same upload with extendedMode off: no X-Medplum header, so a plain R4 Binary (no `url`).
const plainClient = client({ extendedMode: false });
await plainClient.startClientLogin(clientId, clientSecret);
const plainBinary = await plainClient.createBinary({ data: 'plain', contentType: 'text/plain' });
out.plainBinaryKeys = Object.keys(plainBinary).sort();

// Search as a Medplum app does: by name, by token + date with _sort, and a name nobody has.
const family = `Srch${patient.id.replaceAll('-', '').slice(0, 10)}`;
const sp = await medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
const weights = {};
for (const [day, kg] of [['2024-01-01', 70], ['2025-03-04', 72], ['2025-06-01', 75]]) {
  const o = await medplum.createResource({
    resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] },
    subject: { reference: `Patient/${sp.id}` }, effectiveDateTime: day,
    valueQuantity: { value: kg, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' },
  });
  weights[o.id] = day;
}
out.searchByName = (await medplum.searchResources('Patient', { name: family.toLowerCase() })).map((p) => p.id).join() === sp.id;
out.searchNobody = (await medplum.searchResources('Patient', { name: `Nobody${family}` })).length;
const recent = await medplum.searchResources('Observation', {
  subject: `Patient/${sp.id}`, code: 'http://loinc.org|29463-7', date: 'ge2025-01-01', _sort: '-date',
});
out.searchRecentDates = recent.map((o) => weights[o.id]);
const heavy = await medplum.searchResources('Observation', `subject=Patient/${sp.id}&value-quantity=gt71&_count=1&_total=accurate`);
out.searchHeavyTotal = heavy.bundle.total;
out.searchHeavyPage = heavy.length;

console.log(JSON.stringify(out));
