// Drives a fhirvault server with MedplumClient (@medplum/core) as a Medplum user would.
// Usage: node medplum_interop.mjs <server-root-url> <client-id> <client-secret>
// Prints one JSON object with what it observed; exits non-zero on any failure.
import { MedplumClient } from '@medplum/core';

const [root, clientId, clientSecret] = process.argv.slice(2);
const medplum = new MedplumClient({
  baseUrl: root.endsWith('/') ? root : root + '/',
  fhirUrlPath: 'fhir/R4',
  tokenUrl: new URL('oauth2/token', root.endsWith('/') ? root : root + '/').toString(),
  fetch: globalThis.fetch,
  cacheTime: 0,
});

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

// Binary upload the Medplum way, then an attachment on a Patient photo and a Communication.
const bytes = new Uint8Array(4096).map((_, i) => (i * 31) % 256);
const binary = await medplum.createBinary({ data: bytes, contentType: 'application/octet-stream', filename: 'noise.bin' });
out.binaryId = binary.id;
out.binaryUrl = binary.url;
const attachment = await medplum.createAttachment({ data: 'hello from medplum', contentType: 'text/plain', filename: 'hello.txt' });
out.attachmentUrl = attachment.url;
const withPhoto = await medplum.updateResource({ ...updated, photo: [attachment] });
out.photoUrlOnWrite = withPhoto.photo?.[0]?.url;
const comm = await medplum.createResource({
  resourceType: 'Communication', status: 'completed', subject: { reference: `Patient/${patient.id}` },
  payload: [{ contentAttachment: attachment }],
});
const commRead = await medplum.readResource('Communication', comm.id);
out.communicationUrl = commRead.payload?.[0]?.contentAttachment?.url;
const blob = await medplum.download(commRead.payload[0].contentAttachment.url);
out.downloadedText = await blob.text();
const rawBlob = await medplum.download(binary.url);
const raw = new Uint8Array(await rawBlob.arrayBuffer());
out.binaryRoundTrip = raw.length === bytes.length && raw.every((b, i) => b === bytes[i]);

console.log(JSON.stringify(out));
