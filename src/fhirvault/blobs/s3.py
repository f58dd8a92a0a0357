"""The S3 backend: blobs as objects in one bucket of any S3-compatible store (AWS S3, MinIO, Ceph, SeaweedFS)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fhirvault.blobs.base import OWN_KEY, BlobStore, PresignedUploads, StoredObject
from fhirvault.errors import StorageFailure

# S3 wants every part but the last to be at least 5 MiB; 8 MiB keeps memory small and requests few.
PART_SIZE = 8 * 1024 * 1024
# Reads are handed on in pieces of at most this size, so a download never holds more than this.
READ_CHUNK = 1024 * 1024

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3BlobStore(BlobStore, PresignedUploads):
    """Blobs as objects under their key in one bucket, spoken to in plain S3 with path-style addressing."""

    name = "s3"

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str,
                 *, part_size: int = PART_SIZE) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.part_size = part_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._client_cm: Any = None
        self._client: Any = None
        self._bucket_ready = False
        self._lock = asyncio.Lock()

    # -- connection -------------------------------------------------------------------------------

    async def _s3(self) -> Any:
        """The client, opened and the bucket made sure of at first use."""
        if self._client is not None and self._bucket_ready:
            return self._client
        async with self._lock:
            if self._client is None:
                config = Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=32,
                    # Newer botocore adds CRC checksums to every upload by default; many S3-compatible
                    # stores reject or ignore them, and SigV4 already protects the payload.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                cm = get_session().create_client(
                    "s3", endpoint_url=self.endpoint or None, region_name=self.region or None,
                    aws_access_key_id=self._access_key, aws_secret_access_key=self._secret_key,
                    config=config,
                )
                with self._translated("connect", None):
                    self._client = await cm.__aenter__()
                self._client_cm = cm
            if not self._bucket_ready:
                await self._ensure_bucket(self._client)
                self._bucket_ready = True
        return self._client

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES:
                raise self._failure("HeadBucket", None, exc) from None
        except BotoCoreError as exc:
            raise self._failure("HeadBucket", None, exc) from None
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            # AWS refuses a CreateBucket outside us-east-1 without the location; others ignore it.
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await client.create_bucket(**params)
        except ClientError as exc:
            # Another node may have created it in between.
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._failure("CreateBucket", None, exc) from None
        except BotoCoreError as exc:
            raise self._failure("CreateBucket", None, exc) from None

    async def close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        self._bucket_ready = False
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    # -- BlobStore --------------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        client = await self._s3()
        # At most one part is held: chunks gather until they reach a part's size, are joined into the
        # part's body (the chunks then let go) and sent before the next chunk is read.
        pending: list[bytes] = []
        pending_size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            # The chunk iterator's own exceptions (client gone, size limit) propagate unchanged.
            async for chunk in chunks:
                if not chunk:
                    continue
                # A copy only when the caller hands a mutable buffer it may reuse.
                pending.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
                pending_size += len(chunk)
                if pending_size < self.part_size:
                    continue
                if upload_id is None:
                    with self._translated("CreateMultipartUpload", key):
                        started = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
                    upload_id = started["UploadId"]
                body = b"".join(pending)
                pending.clear()
                pending_size = 0
                parts.append(await self._upload_part(client, key, upload_id, len(parts) + 1, body))
                del body
            body = b"".join(pending)
            pending.clear()
            if upload_id is None:
                # Small enough for one request: nothing can be left half-written.
                with self._translated("PutObject", key):
                    await client.put_object(Bucket=self.bucket, Key=key, Body=body)
                return
            if body:
                parts.append(await self._upload_part(client, key, upload_id, len(parts) + 1, body))
            del body
            with self._translated("CompleteMultipartUpload", key):
                await client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            if upload_id is not None:
                # Shielded so that a cancelled request (client disconnect) still removes its parts.
                await asyncio.shield(self._abort(client, key, upload_id))
            raise

    async def _upload_part(self, client: Any, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        with self._translated("UploadPart", key):
            answer = await client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, client: Any, key: str, upload_id: str) -> None:
        # Best effort: the original error is the one worth reporting; a stale upload is also
        # visible in the bucket's list of multipart uploads and to the store's own lifecycle rules.
        with contextlib.suppress(Exception):
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        client = await self._s3()
        if end is not None and end == start:
            if not await self.exists(key):
                raise StorageFailure(f"blob {key} does not exist in bucket {self.bucket}")
            return
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await client.get_object(**params)
        except ClientError as exc:
            if _error_code(exc) == "InvalidRange":
                return  # start lies at or past the end: the asked-for bytes are none
            raise self._failure("GetObject", key, exc) from None
        except BotoCoreError as exc:
            raise self._failure("GetObject", key, exc) from None
        body = answer["Body"]
        try:
            while True:
                with self._translated("GetObject", key):
                    piece = await body.read(READ_CHUNK)
                if not piece:
                    break
                yield piece
        finally:
            # Also when the reader stops early (client gone): hand the connection back.
            with contextlib.suppress(Exception):
                await body.aclose()

    async def delete(self, key: str) -> None:
        client = await self._s3()
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES - {"NoSuchBucket"}:
                raise self._failure("DeleteObject", key, exc) from None
        except BotoCoreError as exc:
            raise self._failure("DeleteObject", key, exc) from None
        # A process killed mid-upload leaves its multipart upload open (and its parts billed).
        async for upload in self._multipart_uploads(prefix=key):
            if upload["Key"] == key:
                with self._translated("AbortMultipartUpload", key):
                    await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    async def stored_keys(self, changed_before: float) -> AsyncIterator[str]:
        """Keys of objects and of incomplete multipart uploads last changed (initiated) before the time."""
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket}
        while True:
            with self._translated("ListObjectsV2", None):
                page = await client.list_objects_v2(**params)
            for item in page.get("Contents", []):
                if OWN_KEY.fullmatch(item["Key"]) and item["LastModified"].timestamp() < changed_before:
                    yield item["Key"]
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        async for upload in self._multipart_uploads():
            if OWN_KEY.fullmatch(upload["Key"]) and upload["Initiated"].timestamp() < changed_before:
                yield upload["Key"]

    async def _multipart_uploads(self, prefix: str = "") -> AsyncIterator[dict[str, Any]]:
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket}
        if prefix:
            params["Prefix"] = prefix
        while True:
            with self._translated("ListMultipartUploads", None):
                page = await client.list_multipart_uploads(**params)
            for upload in page.get("Uploads", []):
                yield upload
            if not page.get("IsTruncated"):
                return
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    async def _head(self, key: str, **extra: Any) -> dict[str, Any] | None:
        """HeadObject's answer for `key`, None when there is no such object."""
        client = await self._s3()
        try:
            head: dict[str, Any] = await client.head_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES - {"NoSuchBucket"}:
                return None
            raise self._failure("HeadObject", key, exc) from None
        except BotoCoreError as exc:
            raise self._failure("HeadObject", key, exc) from None
        return head

    async def presigned_get_url(self, key: str, *, expires_in: int, content_type: str,
                                content_disposition: str | None) -> str | None:
        client = await self._s3()
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        with self._translated("presign GetObject", key):
            url: str = await client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return url

    # -- PresignedUploads: direct uploads by clients ------------------------------------------------

    async def presigned_put_url(self, key: str, *, expires_in: int, content_type: str, size: int,
                                sha256_b64: str | None) -> str:
        client = await self._s3()
        # Content-Type and Content-Length are signed headers of the URL (SigV4), and so is the checksum:
        # a PUT with other values fails the store's signature check; the store also checks the checksum
        # against the bytes it receives.
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type,
                                  "ContentLength": size}
        if sha256_b64:
            params["ChecksumSHA256"] = sha256_b64
        with self._translated("presign PutObject", key):
            url: str = await client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        return url

    async def begin_parts(self, key: str, content_type: str) -> str:
        client = await self._s3()
        with self._translated("CreateMultipartUpload", key):
            started = await client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        return str(started["UploadId"])

    async def presigned_part_url(self, key: str, upload_id: str, number: int, *, size: int,
                                 expires_in: int) -> str:
        client = await self._s3()
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number,
                  "ContentLength": size}
        with self._translated("presign UploadPart", key):
            url: str = await client.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires_in)
        return url

    async def uploaded_parts(self, key: str, upload_id: str) -> dict[int, int] | None:
        listed = await self._listed_parts(key, upload_id)
        return None if listed is None else {int(p["PartNumber"]): int(p["Size"]) for p in listed}

    async def join_parts(self, key: str, upload_id: str, numbers: list[int]) -> None:
        client = await self._s3()
        etags = {int(p["PartNumber"]): p["ETag"] for p in await self._listed_parts(key, upload_id) or []}
        missing = [n for n in numbers if n not in etags]
        if missing:
            raise StorageFailure(f"parts {missing} of blob {key} are not in bucket {self.bucket}")
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in numbers]
        with self._translated("CompleteMultipartUpload", key):
            await client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})

    async def _listed_parts(self, key: str, upload_id: str) -> list[dict[str, Any]] | None:
        """Every part of the multipart upload (ListParts, all pages); None when the upload is gone."""
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        parts: list[dict[str, Any]] = []
        while True:
            try:
                page = await client.list_parts(**params)
            except ClientError as exc:
                if _error_code(exc) in {"NoSuchUpload", "404", "NotFound"}:
                    return None
                raise self._failure("ListParts", key, exc) from None
            except BotoCoreError as exc:
                raise self._failure("ListParts", key, exc) from None
            parts.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                return parts
            params["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def stat(self, key: str) -> StoredObject | None:
        head = await self._head(key, ChecksumMode="ENABLED")
        return None if head is None else StoredObject(int(head["ContentLength"]), head.get("ChecksumSHA256") or None)

    # -- errors -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self, operation: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(operation, key, exc) from None

    def _failure(self, operation: str, key: str | None, exc: BaseException) -> StorageFailure:
        """A StorageFailure saying what failed, built only from parts that cannot hold a credential."""
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key is not None and code in {"NoSuchKey", "404", "NotFound"}:
                return StorageFailure(f"blob {key} does not exist in bucket {self.bucket}")
            detail = f"{code} (HTTP {status})" if status else code
        else:
            detail = f"{type(exc).__name__}: {exc}"
        target = f"blob {key} in bucket {self.bucket}" if key is not None else f"bucket {self.bucket}"
        message = f"S3 {operation} failed for {target} at {self.endpoint}: {detail}"
        for secret in (self._secret_key, self._access_key):
            if secret:
                message = message.replace(secret, "***")
        return StorageFailure(message)


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))
