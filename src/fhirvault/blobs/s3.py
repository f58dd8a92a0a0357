"""The S3 backend: blobs as objects in one bucket of any S3-compatible store (AWS S3, MinIO, Ceph, SeaweedFS)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fhirvault.blobs.base import OWN_KEY, BlobStore, PresignedUploads, StoredObject
from fhirvault.errors import StorageFailure

# S3 wants every part but the last to be at least 5 MiB; 8 MiB keeps memory small and requests few.
PART_SIZE = 8 * 1024 * 1024
# Reads are handed on in pieces of at most this size, so a download never holds more than this.
READ_CHUNK = 1024 * 1024

# S3's bounds on multipart uploads: parts but the last of at least 5 MiB, at most 10,000 parts.
MIN_PART = 5 * 1024 * 1024
MAX_PARTS = 10_000
# Bytes moved between a spool file and the network or the request at a time.
SPOOL_CHUNK = 1024 * 1024

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
        """Closes the S3 client and its connections."""
        cm, self._client_cm, self._client = self._client_cm, None, None
        self._bucket_ready = False
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    # -- BlobStore --------------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """As BlobStore.put: a multipart upload of parts gathered in a bounded buffer (never the whole blob in
        memory), aborted on any failure so nothing is left under `key`."""
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

    # -- resumable staging --------------------------------------------------------------------------
    # A resumable blob is one multipart upload under its key. Appends send full parts (of `part_size`,
    # at least S3's 5 MiB, chosen at the start so that the whole length fits in 10,000 parts); bytes that
    # do not yet fill a part (a small PATCH, or the end of a cut one) are kept in a small object
    # `<key>.tail.<n>` beside it, so that another node can go on. Part bodies are gathered in a temporary
    # file on local disk, never in memory. Part numbers follow from the offset, so a part sent by an
    # append whose result was not recorded is simply sent again.

    def begin_staging(self, length: int) -> dict[str, Any]:
        """As BlobStore.begin_staging: the part size for a blob of `length` bytes (at least 5 MiB, at most
        10,000 parts); the multipart upload begins with the first append."""
        part_size = max(MIN_PART, -(-length // MAX_PARTS))
        return {"part_size": part_size, "upload_id": None, "parts": [], "tail": None, "tail_size": 0}

    async def append(self, key: str, offset: int, chunks: AsyncIterator[bytes], staging: dict[str, Any],
                     *, length: int) -> dict[str, Any]:
        """As BlobStore.append: whole parts go to the multipart upload, each spooled in a temporary file on
        local disk; a tail shorter than a part is kept as a small object in the bucket, so any node
        can go on with the upload."""
        client = await self._s3()
        state = {**staging, "parts": list(staging["parts"])}
        part_size: int = state["part_size"]
        if offset != len(state["parts"]) * part_size + state["tail_size"]:
            raise StorageFailure(f"The staging state of blob {key} does not match offset {offset}")
        spool: BinaryIO = await asyncio.to_thread(tempfile.TemporaryFile)
        try:
            spooled = 0
            if state["tail"]:
                async for piece in self.get(state["tail"]):
                    await asyncio.to_thread(spool.write, piece)
                    spooled += len(piece)
                if spooled != state["tail_size"]:
                    raise StorageFailure(f"The staged tail of blob {key} is damaged")
            position = offset
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    room = part_size - spooled
                    await asyncio.to_thread(spool.write, view[:room])
                    taken = min(room, len(view))
                    view = view[taken:]
                    spooled += taken
                    position += taken
                    if spooled == part_size:
                        await self._send_part(client, key, state, spool, spooled)
                        spooled = 0
            if position == offset and position != length:
                return staging  # nothing new: the recorded tail stays as it is
            state["tail"], state["tail_size"] = None, 0
            if position == length and spooled:
                await self._send_part(client, key, state, spool, spooled)  # the last part may be small
            elif spooled:
                tail = f"{key}.tail.{uuid.uuid4().hex[:12]}"
                await asyncio.to_thread(spool.seek, 0)
                with self._translated("PutObject", tail):
                    await client.put_object(Bucket=self.bucket, Key=tail, Body=spool, ContentLength=spooled)
                state["tail"], state["tail_size"] = tail, spooled
        finally:
            await asyncio.to_thread(spool.close)
        return state

    async def _send_part(self, client: Any, key: str, state: dict[str, Any], spool: BinaryIO, size: int) -> None:
        if state["upload_id"] is None:
            with self._translated("CreateMultipartUpload", key):
                started = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
            state["upload_id"] = started["UploadId"]
        await asyncio.to_thread(spool.seek, 0)
        number = len(state["parts"]) + 1
        with self._translated("UploadPart", key):
            answer = await client.upload_part(Bucket=self.bucket, Key=key, UploadId=state["upload_id"],
                                              PartNumber=number, Body=spool, ContentLength=size)
        state["parts"].append(answer["ETag"])
        await asyncio.to_thread(spool.seek, 0)
        await asyncio.to_thread(spool.truncate, 0)

    async def drop_staging(self, key: str, offset: int, staging: dict[str, Any], keep: dict[str, Any]) -> None:
        """As BlobStore.drop_staging: removes the tail object that `keep` does not record (best effort;
        parts past `offset` are replaced by the next append, or go with `delete(key)`)."""
        if staging.get("tail") and staging["tail"] != keep.get("tail"):
            with contextlib.suppress(Exception):
                await (await self._s3()).delete_object(Bucket=self.bucket, Key=staging["tail"])

    async def finish_staging(self, key: str, staging: dict[str, Any], size: int) -> None:
        """As BlobStore.finish_staging: completes the multipart upload from the staged parts (an empty blob is
        one empty PutObject; a completion that already happened is recognised by the object's size), then
        removes tail objects and other multipart uploads of `key`."""
        client = await self._s3()
        if not staging["parts"]:
            with self._translated("PutObject", key):
                await client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        else:
            parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(staging["parts"], start=1)]
            try:
                await client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=staging["upload_id"],
                                                       MultipartUpload={"Parts": parts})
            except (ClientError, BotoCoreError) as exc:
                # Completed already by an attempt whose database commit did not follow?
                if not await self._has_size(key, size):
                    raise self._failure("CompleteMultipartUpload", key, exc) from None
        await self._remove_staging_leftovers(key, keep_upload=None)

    async def _has_size(self, key: str, size: int) -> bool:
        client = await self._s3()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            return False
        return bool(head.get("ContentLength") == size)

    async def _remove_staging_leftovers(self, key: str, keep_upload: str | None) -> None:
        """Tail objects of the key, and multipart uploads of it other than `keep_upload`."""
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{key}."}
        while True:
            with self._translated("ListObjectsV2", None):
                page = await client.list_objects_v2(**params)
            for item in page.get("Contents", []):
                with self._translated("DeleteObject", item["Key"]):
                    await client.delete_object(Bucket=self.bucket, Key=item["Key"])
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        async for upload in self._multipart_uploads(prefix=key):
            if upload["Key"] == key and upload["UploadId"] != keep_upload:
                with self._translated("AbortMultipartUpload", key):
                    await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """As BlobStore.get: a ranged GetObject streamed in chunks."""
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
        """As BlobStore.delete: removes the object, its staging tails and aborts unfinished multipart uploads
        under `key`."""
        client = await self._s3()
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES - {"NoSuchBucket"}:
                raise self._failure("DeleteObject", key, exc) from None
        except BotoCoreError as exc:
            raise self._failure("DeleteObject", key, exc) from None
        # A process killed mid-upload leaves its multipart upload open (and its parts billed); a resumable
        # upload also leaves the objects holding its tail.
        await self._remove_staging_leftovers(key, keep_upload=None)

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
        """As BlobStore.exists: a HeadObject."""
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
        """As BlobStore.presigned_get_url: a SigV4 presigned GetObject URL answering with `content_type` and
        the given disposition."""
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
        """As PresignedUploads.presigned_put_url: a SigV4 presigned PutObject URL bound to the key, Content-
        Type, Content-Length and, when given, the x-amz-checksum-sha256 the store verifies."""
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
        """As PresignedUploads.begin_parts: CreateMultipartUpload; returns its upload id."""
        client = await self._s3()
        with self._translated("CreateMultipartUpload", key):
            started = await client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        return str(started["UploadId"])

    async def presigned_part_url(self, key: str, upload_id: str, number: int, *, size: int,
                                 expires_in: int) -> str:
        """As PresignedUploads.presigned_part_url: a SigV4 presigned UploadPart URL bound to the part's exact
        size."""
        client = await self._s3()
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number,
                  "ContentLength": size}
        with self._translated("presign UploadPart", key):
            url: str = await client.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires_in)
        return url

    async def uploaded_parts(self, key: str, upload_id: str) -> dict[int, int] | None:
        """As PresignedUploads.uploaded_parts: from ListParts."""
        listed = await self._listed_parts(key, upload_id)
        return None if listed is None else {int(p["PartNumber"]): int(p["Size"]) for p in listed}

    async def join_parts(self, key: str, upload_id: str, numbers: list[int]) -> None:
        """As PresignedUploads.join_parts: CompleteMultipartUpload with the listed parts' ETags."""
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
        """As PresignedUploads.stat: a HeadObject with checksum mode on."""
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
