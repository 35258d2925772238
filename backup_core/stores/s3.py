"""An S3-compatible bucket as a store: `<prefix><target>/<archive file name>` objects.

Transfers are boto3's (multipart, per-part checksums the server verifies, bandwidth
limit, progress, retries with backoff); this module chooses values and tells the
truth about the result.  A multipart ETag is no checksum of the whole object, so
the archive's SHA-256 travels in the object's metadata (`x-amz-meta-sha256`) and
the upload is confirmed by reading the object's size and that record back.  An
object that already exists is never overwritten.  boto3 is imported only by runs
that use a bucket, so `invoke --list` and `validate` stay quick.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

from backup_core.errors import command
from backup_core.manifest import Remote, redact
from backup_core.stores.base import (
    Progress,
    Stored,
    StoreError,
    foreign,
    give_up_on,
    not_asked,
    parse,
    recorded_host,
    this_host,
)

_MULTIPART = 64 << 20  # below this an archive goes in one request, whose SHA-256 the server keeps whole
_ALGORITHMS = {"sha256": "SHA256", "crc32": "CRC32"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "Forbidden"}
_CHECKSUM = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest", "InvalidChecksum"}
_QUOTA = {"QuotaExceeded", "EntityTooLarge", "StorageQuotaExceeded", "ServiceQuotaExceeded"}
_LOCKED = {"AccessDenied", "ObjectLocked", "InvalidRequest"}  # what services answer for a delete under a lock
_TRIES, _CONNECT_TIMEOUT, _READ_TIMEOUT = 3, 5, 30  # per request; seconds
# A multipart upload pending this long under a target's prefix was left by a run that died or
# lost the server mid-upload (s3transfer aborts the ones it sees fail): its parts are billed.
_STALE_UPLOAD = timedelta(days=1)


class S3Store:
    """A bucket (and prefix) of an S3-compatible service."""

    def __init__(self, remote: Remote) -> None:
        self.name, self.remote = remote.name, remote
        self._client: Any = None
        self._whole: dict[str, bool] = {}  # key: whether check() had the server's whole-object SHA-256

    def describe(self) -> str:
        return self.remote.describe()

    # --- the interface ---------------------------------------------------------------------------

    def list(self, target: str) -> list[Stored]:
        found = []
        with self._errors("cannot list the bucket"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.remote.bucket, Prefix=self._key(target, "")
            )
            for page in pages:
                for item in page.get("Contents", []):
                    stored = parse(target, item["Key"].rsplit("/", 1)[-1], item["Size"])
                    # Only names of this target directly under its prefix: never another target's.
                    if stored is not None and item["Key"] == self._key(target, stored.name):
                        found.append(stored)
        return sorted(found)

    def put(self, target: str, file: Path, name: str, sha256: str, progress: Progress | None = None) -> Stored:
        key = self._key(target, name)
        size = file.stat().st_size
        existing = self._head(key)
        if existing is not None:
            # An upload an earlier run finished but could not confirm: keep it if it is ours and whole.
            recorded = existing.get("Metadata", {}).get("sha256")
            if recorded == sha256 and existing["ContentLength"] == size:
                return Stored(_when(target, name), name, size)
            # Without a recorded checksum its content is unknown, not known to differ.
            what = "with other content" if recorded else "with no checksum recorded, so it is not taken for this copy"
            raise StoreError(
                f"remote {self.name}: {key} already exists {what}; it was not overwritten "
                f"(check it with `{command(f'verify --remote {self.name}')}`, then move or delete it)"
            )
        extra: dict[str, Any] = {"Metadata": {"sha256": sha256, "size": str(size), "host": recorded_host(this_host())}}
        if self.remote.checksum in _ALGORITHMS:
            extra["ChecksumAlgorithm"] = _ALGORITHMS[self.remote.checksum]
        if self.remote.storage_class:
            extra["StorageClass"] = self.remote.storage_class
        self._abort_left_uploads(target, key)
        with self._errors(f"upload of {name} failed"):
            if self.remote.checksum == "md5" and size < _MULTIPART:
                self._put_with_md5(key, file, extra, progress)
            else:
                # s3transfer aborts a multipart upload that fails; one it could not abort (the
                # server gone) is aborted by the next upload (_abort_left_uploads).
                self.client.upload_file(
                    str(file), self.remote.bucket, key, ExtraArgs=extra, Config=self._transfer(), Callback=progress
                )
        self._confirm(key, name, size, sha256)
        return Stored(_when(target, name), name, size)

    def delete(self, target: str, stored: Stored) -> bool:
        from botocore.exceptions import ClientError

        key = self._key(target, stored.name)
        try:
            self.client.delete_object(Bucket=self.remote.bucket, Key=key, **self._version_of(key))
        except ClientError as exc:
            if _code(exc) in _LOCKED and self._is_locked(key):
                return False
            raise StoreError(f"remote {self.name}: cannot delete {key}: {_explain(exc, self.remote)}") from None
        except Exception as exc:
            raise StoreError(f"remote {self.name}: cannot delete {key}: {_explain(exc, self.remote)}") from None
        return True

    def fetch(self, target: str, stored: Stored, scratch: Path) -> Path:
        key = self._key(target, stored.name)
        local = scratch / stored.name
        with self._errors(f"download of {stored.name} failed"):
            self.client.download_file(self.remote.bucket, key, str(local), Config=self._transfer())
        return local

    def check(self, target: str, stored: Stored) -> str | None:
        return self._judged(target, stored)[1]

    def checked(self, target: str, stored: Stored) -> str:
        if self._whole.get(self._key(target, stored.name)):
            return "its size and the server's SHA-256 of its bytes match those recorded at upload"
        # A multipart upload's checksum is of its parts, and a CRC32 upload's is no SHA-256: only
        # the size can be compared without reading the object.
        return (
            "its size matches the one recorded at upload; its bytes were not read (the server keeps no "
            "SHA-256 of the whole object for this copy): add --download to read them"
        )

    def recorded(self, target: str, stored: Stored) -> str | None:
        head = self._head(self._key(target, stored.name))
        digest = (head or {}).get("Metadata", {}).get("sha256")
        return digest if isinstance(digest, str) and len(digest) == 64 else None

    def sender(self, target: str, stored: Stored) -> str:
        try:
            head = self._head(self._key(target, stored.name))
        except Exception:  # a restore's warning must not stop the restore
            return ""
        return _host(head)

    def vouched(self, target: str, stored: Stored) -> str | None:
        # The same HEAD request as check(): the recorded host comes with the checksum.
        head, why = self._judged(target, stored)
        return why or foreign(stored.name, _host(head))

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        # Asked before each request: a remote that did not answer is not waited on again.
        refused = not_asked(self.name)
        if refused is not None:
            raise refused
        if self._client is None:
            self._client = make_client(self.remote)
        return self._client

    def _judged(self, target: str, stored: Stored) -> tuple[dict[str, Any] | None, str | None]:
        """The copy's HEAD answer, and what is wrong with it (see _verdict)."""
        key = self._key(target, stored.name)
        head = self._head(key, checksums=True)
        whole = (head or {}).get("ChecksumSHA256")
        self._whole[key] = bool(whole and "-" not in whole)
        return head, (f"{key} is missing from the bucket" if head is None else _verdict(stored, head))

    def _key(self, target: str, name: str) -> str:
        return f"{self.remote.prefix}{target}/{name}"

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=_MULTIPART,
            multipart_chunksize=_MULTIPART // 4,
            max_concurrency=4,
            max_bandwidth=self.remote.max_bandwidth,
        )

    def _put_with_md5(self, key: str, file: Path, extra: dict[str, Any], progress: Progress | None) -> None:
        import hashlib

        body = file.read_bytes()
        self.client.put_object(
            Bucket=self.remote.bucket,
            Key=key,
            # One request, outside s3transfer's TransferConfig: max_bandwidth was not applied.
            Body=_Paced(body, self.remote.max_bandwidth) if self.remote.max_bandwidth else body,
            ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
            **{k: v for k, v in extra.items() if k != "ChecksumAlgorithm"},
        )
        if progress:
            progress(len(body))

    def _abort_left_uploads(self, target: str, key: str) -> None:
        """Abort multipart uploads an earlier run left under this target's prefix: one of `key`,
        the archive about to go up again, or one pending for more than a day.  A run that died,
        or lost the server mid-upload, could not abort its own.  Housekeeping only: where the
        listing is refused or unsupported, a lifecycle rule must do it (see the README)."""
        folder = self._key(target, "")
        cutoff = datetime.now(timezone.utc) - _STALE_UPLOAD
        with contextlib.suppress(Exception):
            listing = self.client.list_multipart_uploads(Bucket=self.remote.bucket, Prefix=folder)
            for upload in listing.get("Uploads", []):
                name = upload["Key"][len(folder) :]
                if parse(target, name) is None or "/" in name:
                    continue  # not an archive of this target
                started = upload.get("Initiated")
                if upload["Key"] == key or (isinstance(started, datetime) and started < cutoff):
                    with contextlib.suppress(Exception):
                        self.client.abort_multipart_upload(
                            Bucket=self.remote.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )

    def _head(self, key: str, checksums: bool = False) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            extra = {"ChecksumMode": "ENABLED"} if checksums else {}
            head: dict[str, Any] = self.client.head_object(Bucket=self.remote.bucket, Key=key, **extra)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"remote {self.name}: cannot read {key}: {_explain(exc, self.remote)}") from None
        except Exception as exc:
            raise StoreError(f"remote {self.name}: cannot read {key}: {_explain(exc, self.remote)}") from None
        return head

    def _confirm(self, key: str, name: str, size: int, sha256: str) -> None:
        head = self._head(key, checksums=True)
        if head is None:
            raise StoreError(f"remote {self.name}: {name} was uploaded but is not in the bucket")
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
            raise StoreError(
                f"remote {self.name}: {name} in the bucket is not what was sent "
                f"({head['ContentLength']} bytes, {size} sent); it is not counted as a copy"
            )
        whole = head.get("ChecksumSHA256")
        if whole and "-" not in whole and base64.b64decode(whole).hex() != sha256:
            raise StoreError(f"remote {self.name}: {name} in the bucket has another checksum than was sent")

    def _version_of(self, key: str) -> dict[str, str]:
        # In a versioned bucket (Object Lock needs one) a plain delete only hides the object
        # behind a marker: delete the version itself, so retention frees what it says it frees.
        with contextlib.suppress(Exception):
            listing = self.client.list_object_versions(Bucket=self.remote.bucket, Prefix=key, MaxKeys=2)
            versions = [v for v in listing.get("Versions", []) if v["Key"] == key and v.get("IsLatest")]
            if versions and versions[0].get("VersionId") not in (None, "null"):
                return {"VersionId": versions[0]["VersionId"]}
        return {}

    def _is_locked(self, key: str) -> bool:
        with contextlib.suppress(Exception):
            retention = self.client.get_object_retention(Bucket=self.remote.bucket, Key=key, **self._version_of(key))
            return bool(retention.get("Retention", {}).get("Mode"))
        return False

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"remote {self.name}: {doing}: {_explain(exc, self.remote)}") from None


def make_client(remote: Remote) -> Any:
    """A boto3 S3 client for `remote`: the standard credential chain, bounded retries and time-outs."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=remote.profile, region_name=remote.region)
    config = Config(
        # Bounded, and set here so the host's AWS_MAX_ATTEMPTS or ~/.aws/config cannot unbound it:
        # 3 tries with backoff, then the run reports the remote as failed and goes on.
        retries={"total_max_attempts": _TRIES, "mode": "standard"},
        connect_timeout=_CONNECT_TIMEOUT,
        read_timeout=_READ_TIMEOUT,
        s3=cast(Any, {"addressing_style": remote.addressing_style}),  # a Literal the schema has checked
        # Checksums are asked for explicitly per request; the newer "always" defaults break
        # several S3-compatible services.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="backup-core",
    )
    client = session.client("s3", endpoint_url=remote.endpoint, config=config)
    # Never over an existing object, even one that appears between the check and the upload:
    # the service itself refuses (412) a put or a multipart completion when the key exists, and
    # s3transfer then aborts the refused multipart upload.  upload_file takes no IfNoneMatch.
    for operation in ("PutObject", "CompleteMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{operation}", _if_none_match)
    if remote.checksum == "md5":
        # The transfer's parts carry no checksum of their own when none is asked for by name,
        # and a service that takes no x-amz-checksum header takes none: each part's Content-MD5
        # is what the service checks its bytes against (a single request has one already).
        client.meta.events.register("before-call.s3.UploadPart", _part_md5)
    return client


def _if_none_match(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("IfNoneMatch", "*")


def _part_md5(params: dict[str, Any], **_: Any) -> None:
    """Give an UploadPart request the Content-MD5 of its body, read once more from the file."""
    import hashlib

    body, headers = params.get("body"), params["headers"]
    if body is None or "Content-MD5" in headers:
        return
    # s3transfer counts progress and spends the bandwidth limit only once a request is sent
    # (it turns both on as the request is created, after this): this read costs neither.
    if hasattr(body, "signal_not_transferring"):
        body.signal_not_transferring()
    start, digest = body.tell(), hashlib.md5(usedforsecurity=False)
    while piece := body.read(1 << 20):
        digest.update(piece)
    body.seek(start)
    headers["Content-MD5"] = base64.b64encode(digest.digest()).decode("ascii")


def _when(target: str, name: str) -> Any:
    stored = parse(target, name)
    assert stored is not None, name
    return stored.when


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# What the system's resolver says of a host name it cannot find (glibc, musl, macOS, Windows).
_UNRESOLVED = (
    "Name or service not known",
    "nodename nor servname",
    "getaddrinfo failed",
    "Temporary failure in name resolution",
    "No address associated with hostname",
    "Name does not resolve",
)


def _explain(exc: BaseException, remote: Remote) -> str:
    """What went wrong, in words an operator can act on; never a credential.  Every error the
    client library gives becomes a message here, so here its texts lose what a URL carries
    (an endpoint from AWS_ENDPOINT_URL may hold a user and password, or a token in its query).
    A remote that could not be reached or did not answer is given up on for the rest of the run."""
    if type(exc).__name__ == "S3UploadFailedError" and exc.__context__ is not None:
        exc = exc.__context__  # boto3 keeps the service's answer, or the connection's error, only there
    said = redact.urls(_described(exc, remote))
    if _unanswered(exc):
        give_up_on(remote.name, said)
    return said


def _unanswered(exc: BaseException) -> bool:
    from botocore import exceptions as botocore_errors

    unreached = (botocore_errors.EndpointConnectionError, botocore_errors.ConnectionClosedError)
    return isinstance(exc, (*unreached, botocore_errors.ConnectTimeoutError, botocore_errors.ReadTimeoutError))


def _described(exc: BaseException, remote: Remote) -> str:
    from botocore import exceptions as botocore_errors

    where = remote.endpoint or "AWS"
    if isinstance(exc, botocore_errors.CredentialRetrievalError) and exc.kwargs.get("provider") == "custom-process":
        # Its text is the helper's stderr, which may echo what it fetched; botocore keeps no exit status.
        profile = f"AWS profile {remote.profile}" if remote.profile else "the AWS profile"
        return (
            f"the credential_process of {profile} failed (its output is not shown, as it may hold a "
            "secret); run that command by hand to see why"
        )
    if isinstance(exc, json.JSONDecodeError):
        # Raised while credentials are fetched (botocore parses a credential_process's output,
        # and a few caches, as JSON): neither the profile nor the helper was named.
        profile = f"AWS profile {remote.profile}" if remote.profile else "the AWS profile"
        return (
            f"the credentials of {profile} could not be read: its credential_process (or a credentials cache) "
            f"printed no valid JSON ({exc.msg} at line {exc.lineno}); run that command by hand to see what it prints"
        )
    if isinstance(exc, botocore_errors.NoCredentialsError):
        return "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or a role"
    if isinstance(exc, botocore_errors.ProfileNotFound):
        # The manifest's profile: is checked when it is loaded; one that fails here came from the
        # environment, which the operator must be told to look at.
        named = exc.kwargs.get("profile") or remote.profile
        # botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE: name the one it took.
        variable = "AWS_DEFAULT_PROFILE" if os.environ.get("AWS_DEFAULT_PROFILE") else "AWS_PROFILE"
        source, other = ("", "") if remote.profile else (f" (named by {variable})", f" or unset {variable}")
        return (
            f"AWS profile {named!r}{source} is in neither the shared config nor the credentials file; "
            f"add it (aws configure --profile){other}"
        )
    if isinstance(exc, botocore_errors.ConnectionClosedError):
        # Connected, then dropped before an answer: a server that hangs or a proxy that cut it.
        return f"{where} closed the connection before answering ({_TRIES} tries); is the endpoint healthy?"
    if isinstance(exc, botocore_errors.SSLError):
        if "WRONG_VERSION_NUMBER" in str(exc) or "record layer failure" in str(exc):
            return f"{where} does not answer in TLS: is it an http:// endpoint written as https://?"
        return f"the TLS handshake with {where} failed; check its certificate (or AWS_CA_BUNDLE)"
    if isinstance(exc, botocore_errors.EndpointConnectionError):
        cause = str(exc.kwargs.get("error", ""))
        if any(words in cause for words in _UNRESOLVED):
            return f"the host name of {where} cannot be resolved; check the endpoint's spelling and DNS"
        return f"cannot reach {where} (connection refused or no route); is the endpoint up?"
    if isinstance(exc, botocore_errors.ConnectTimeoutError):
        return f"{where} did not answer in time ({_TRIES} tries, {_CONNECT_TIMEOUT} s each to connect)"
    if isinstance(exc, botocore_errors.ReadTimeoutError):
        return f"{where} did not answer in time ({_TRIES} tries, {_READ_TIMEOUT} s each to answer)"
    if isinstance(exc, botocore_errors.ClientError):
        code = _code(exc)
        if code in ("NoSuchBucket",) or (code == "404" and "bucket" in str(exc).lower()):
            return f"bucket {remote.bucket} does not exist at {where}"
        if code in _DENIED:
            return f"access denied ({code}); check the credentials and the policy for bucket {remote.bucket}"
        if code in _CHECKSUM:
            return f"checksum mismatch ({code}): the service received other bytes than were sent"
        if code in _QUOTA:
            return f"quota exceeded ({code})"
        if code in ("PreconditionFailed", "412"):
            return "an object of that name appeared meanwhile; it was not overwritten"
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"{code}: {message}".rstrip(": ")
    if isinstance(exc, botocore_errors.HTTPClientError) and "header" in str(exc).lower():
        # Its text quotes the refused header whole: the session token, or with a stray newline
        # in the key id the whole Authorization header (seen with an env file saved with CRLF).
        return (
            "a credential holds a character no HTTP header may (a carriage return or newline: a file "
            "with Windows line ends?); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN "
            "or the profile's keys"
        )
    if isinstance(exc, botocore_errors.BotoCoreError):
        return _without_credentials(str(exc))
    if isinstance(exc, OSError):
        return _without_credentials(exc.strerror or str(exc))
    return _without_credentials(f"{type(exc).__name__}: {exc}")


_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _without_credentials(text: str) -> str:
    """`text`, a library's own words, with the environment's credentials (as given, trimmed, or
    quoted as bytes) and a signature header's parts masked: the last guard, for texts this
    module has no sentence of its own for."""
    for variable in _CREDENTIAL_VARIABLES:
        value = os.environ.get(variable, "")
        for form in {value, value.strip(), repr(value.encode())[2:-1]}:
            if len(form) >= 4:
                text = text.replace(form, redact.MASK)
    return re.sub(r"(?i)\b(Credential|Signature|SignedHeaders)=[^,\s'\"]+", r"\1=" + redact.MASK, text)


def _host(head: dict[str, Any] | None) -> str:
    """The host put() recorded with an object; "" for none."""
    return "" if head is None else str(head.get("Metadata", {}).get("host", ""))


def _verdict(stored: Stored, head: dict[str, Any]) -> str | None:
    """What is wrong with a copy, by its HEAD answer against what put() recorded; None if nothing."""
    recorded = head.get("Metadata", {})
    if "sha256" not in recorded:
        return f"{stored.name} has no recorded checksum: it was not uploaded by this tool, or was replaced"
    if recorded.get("size") != str(head["ContentLength"]):
        return (
            f"{stored.name} is {head['ContentLength']} bytes, but {recorded.get('size')} were uploaded: "
            "it was replaced or damaged"
        )
    whole = head.get("ChecksumSHA256")
    if whole and "-" not in whole and base64.b64decode(whole).hex() != recorded["sha256"]:
        return f"{stored.name} does not match the checksum recorded at upload: it was replaced or damaged"
    return None


class _Paced(io.BytesIO):
    """A request body read no faster than `rate` bytes a second on average, as s3transfer paces
    an upload under max_bandwidth; read again from the start (a retry) it is paced on."""

    def __init__(self, data: bytes, rate: int) -> None:
        super().__init__(data)
        self._rate, self._sent, self._start = rate, 0, 0.0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if not self._start:
            self._start = time.monotonic()
        self._sent += len(chunk)
        wait = self._start + self._sent / self._rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return chunk
