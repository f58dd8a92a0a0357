// Uploads a file to fhirvault's tus endpoint with tus-js-client, as a node application would.
// Usage: node tus_upload.mjs ENDPOINT TOKEN FILE CHUNK_SIZE METADATA_JSON
// CHUNK_SIZE 0 sends all that remains in one PATCH (tus-js-client's default). Prints one JSON line:
// {"url": <upload URL>, "progress": [bytes sent, in the order reported], "retries": n}.
import { readFileSync } from 'node:fs';
import { Upload } from 'tus-js-client';

const [endpoint, token, file, chunk, metadata] = process.argv.slice(2);
const data = readFileSync(file);
const progress = [];
let retries = 0;

await new Promise((resolve, reject) => {
  const upload = new Upload(data, {
    endpoint,
    headers: { Authorization: `Bearer ${token}` },
    metadata: JSON.parse(metadata),
    chunkSize: Number(chunk) > 0 ? Number(chunk) : Infinity,
    retryDelays: [0, 200, 500, 1000, 2000],
    onShouldRetry: () => { retries += 1; return true; },
    onProgress: (sent) => progress.push(sent),
    onError: reject,
    onSuccess: () => {
      console.log(JSON.stringify({ url: upload.url, progress, retries }));
      resolve();
    },
  });
  upload.start();
});
