"""The Python client streams: a 200 MiB upload from a generator and a 200 MiB download leave the
client process's peak memory (VmHWM, measured in a subprocess) where a 1 MiB transfer left it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.standin import StandIn

MIB = 1024 * 1024
BIG = 200 * MIB
# Peak-memory headroom for a 200 MiB transfer over the 1 MiB warm-up: chunk buffers, not the file.
HEADROOM = 24 * MIB

CLIENT_SCRIPT = r"""
import json, sys
from fhirvault.client import FhirClient

def peak():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def produce(mib):
    for i in range(mib):
        yield i.to_bytes(4, "big") * (1024 * 1024 // 4)

base, out, big_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
with FhirClient(base, **json.loads(sys.argv[4])) as client:
    small = client.create_attachment(produce(1), content_type="application/octet-stream")
    client.download(small, out)
    baseline = peak()
    big = client.create_attachment(produce(big_mib), content_type="application/octet-stream")
    after_upload = peak()
    client.download(big, out)
    after_download = peak()
print(json.dumps({"baseline": baseline, "after_upload": after_upload, "after_download": after_download,
                  "attachment": big}))
"""


def run_client(base: str, out: Path, auth: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, base, str(out), str(BIG // MIB), json.dumps(auth)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    print(f"client VmHWM: baseline {result['baseline'] / MIB:.1f} MiB, after 200 MiB upload "
          f"{result['after_upload'] / MIB:.1f} MiB, after 200 MiB download {result['after_download'] / MIB:.1f} MiB")
    return result


def test_200_mib_upload_and_download_keep_client_memory_flat(standin: StandIn, tmp_path: Path) -> None:
    out = tmp_path / "big.bin"
    result = run_client(standin.base, out, {"client_id": standin.client_id, "client_secret": standin.client_secret})
    attachment = result["attachment"]
    blob = standin.blobs[attachment["url"].removeprefix("Binary/")]
    # What arrived is what the client says it sent (and the download verified size and hash).
    assert blob.size == BIG == attachment["size"] and blob.sha1_b64 == attachment["hash"]
    assert out.stat().st_size == BIG
    assert result["after_upload"] - result["baseline"] < HEADROOM
    assert result["after_download"] - result["baseline"] < HEADROOM
