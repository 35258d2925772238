"""The S3 test server itself, and the facts about it and boto3 that the S3 store relies on.

If SeaweedFS or boto3 changes one of these behaviours on an upgrade, a test here fails
before a store test fails for a reason that is hard to see.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from s3server import S3Server, S3ServerError

MIB = 1024 * 1024


def code_of(error: BaseException) -> str:
    """The S3 error code of a ClientError, also when boto3's upload_file wrapped it."""
    if isinstance(error, S3UploadFailedError):
        # upload_file re-raises a ClientError as S3UploadFailedError and keeps it only as the context.
        error = error.__context__  # type: ignore[assignment]
    assert isinstance(error, ClientError), error
    return str(error.response["Error"]["Code"])


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        assert code_of(error) == "404"
        return False
    return True


# -- the fixture ----------------------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    body = os.urandom(100_000)
    client.put_object(Bucket=s3_bucket, Key="dir/a.bin", Body=body)
    assert client.get_object(Bucket=s3_bucket, Key="dir/a.bin")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("dir/a.bin", len(body))]


@pytest.mark.parametrize(
    ("identity", "expected"),
    [("wrong-secret", "SignatureDoesNotMatch"), ("unknown", "InvalidAccessKeyId"), ("reader", "AccessDenied")],
)
def test_credentials_are_enforced(s3_server: S3Server, s3_bucket: str, identity: str, expected: str) -> None:
    with pytest.raises(ClientError) as refused:
        s3_server.client(identity).put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert code_of(refused.value) == expected
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert not exists(s3_server.client(), s3_bucket, "k")


def test_the_read_only_identity_reads_but_cannot_delete(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    reader = s3_server.client("reader")
    assert reader.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"x"
    with pytest.raises(ClientError) as refused:
        reader.delete_object(Bucket=s3_bucket, Key="k")
    assert code_of(refused.value) == "AccessDenied"
    assert exists(s3_server.client(), s3_bucket, "k")


@pytest.mark.parametrize(
    "wrong",
    [
        {"ChecksumSHA256": b64(hashlib.sha256(b"other bytes").digest())},
        {"ContentMD5": b64(hashlib.md5(b"other bytes").digest())},
        {"ChecksumCRC32": b64((123456789).to_bytes(4, "big"))},
    ],
    ids=["sha256", "md5", "crc32"],
)
def test_a_wrong_checksum_is_refused_with_bad_digest(
    s3_server: S3Server, s3_bucket: str, wrong: dict[str, str]
) -> None:
    client = s3_server.client()
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"the bytes we mean", **wrong)
    assert (code_of(refused.value), refused.value.response["ResponseMetadata"]["HTTPStatusCode"]) == ("BadDigest", 400)
    assert not exists(client, s3_bucket, "k")


def test_a_wrong_part_checksum_is_refused_and_abort_leaves_nothing(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="big", ChecksumAlgorithm="SHA256")["UploadId"]
    with pytest.raises(ClientError) as refused:
        client.upload_part(
            Bucket=s3_bucket,
            Key="big",
            UploadId=upload,
            PartNumber=1,
            Body=b"a" * 1000,
            ChecksumSHA256=b64(hashlib.sha256(b"b" * 1000).digest()),
        )
    assert code_of(refused.value) == "BadDigest"
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])] == [upload]
    client.abort_multipart_upload(Bucket=s3_bucket, Key="big", UploadId=upload)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not exists(client, s3_bucket, "big")
    # Aborting twice is harmless (a retried abort must not count as a failure); an unknown id is not.
    client.abort_multipart_upload(Bucket=s3_bucket, Key="big", UploadId=upload)
    with pytest.raises(ClientError) as unknown:
        client.abort_multipart_upload(Bucket=s3_bucket, Key="big", UploadId="no-such-upload")
    assert code_of(unknown.value) == "NoSuchUpload"


def test_compliance_lock_refuses_deleting_the_version(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket(object_lock=True)
    client = s3_server.client()
    version = client.put_object(
        Bucket=bucket,
        Key="k",
        Body=b"keep me",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=s3_server.retain_until(days=1),
    )["VersionId"]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key="k", VersionId=version)
    assert code_of(refused.value) == "AccessDenied"
    # delete_objects does not raise: the refusal is in its Errors list.
    answer = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": version}]})
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("k", "AccessDenied")]
    assert client.get_object(Bucket=bucket, Key="k", VersionId=version)["Body"].read() == b"keep me"


def test_a_delete_without_version_in_a_locked_bucket_only_hides_the_object(s3_server: S3Server) -> None:
    """Object Lock buckets are versioned: a plain delete "succeeds" with a delete marker and keeps the bytes."""
    bucket = s3_server.create_bucket(object_lock=True)
    client = s3_server.client()
    version = client.put_object(
        Bucket=bucket,
        Key="k",
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=s3_server.retain_until(),
    )["VersionId"]
    client.delete_object(Bucket=bucket, Key="k")
    assert not exists(client, bucket, "k")
    versions = client.list_object_versions(Bucket=bucket, Prefix="k")
    assert [v["VersionId"] for v in versions["Versions"]] == [version]
    assert len(versions["DeleteMarkers"]) == 1


def test_governance_lock_yields_only_to_bypass_and_a_lock_needs_a_lockable_bucket(
    s3_server: S3Server, s3_bucket: str
) -> None:
    bucket = s3_server.create_bucket(object_lock=True)
    client = s3_server.client()
    lock = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": s3_server.retain_until()}
    version = client.put_object(Bucket=bucket, Key="k", Body=b"x", **lock)["VersionId"]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key="k", VersionId=version)
    assert code_of(refused.value) == "AccessDenied"
    client.delete_object(Bucket=bucket, Key="k", VersionId=version, BypassGovernanceRetention=True)
    assert client.list_object_versions(Bucket=bucket).get("Versions", []) == []
    with pytest.raises(ClientError) as plain_bucket:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"x", **lock)
    assert code_of(plain_bucket.value) == "InvalidRequest"


@pytest.mark.slow
def test_an_outage_refuses_connections_and_the_restarted_server_keeps_its_objects(
    s3_server: S3Server, s3_bucket: str
) -> None:
    endpoint = s3_server.endpoint
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="before", Body=b"kept")
    with s3_server.down():
        assert not s3_server.running
        with pytest.raises(EndpointConnectionError):
            client.put_object(Bucket=s3_bucket, Key="during", Body=b"x")
    assert s3_server.endpoint == endpoint
    assert client.get_object(Bucket=s3_bucket, Key="before")["Body"].read() == b"kept"
    assert not exists(client, s3_bucket, "during")


def test_a_missing_bucket_is_not_created_on_upload(s3_server: S3Server) -> None:
    client = s3_server.client()
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"x")
    assert code_of(refused.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as head:
        client.head_bucket(Bucket="no-such-bucket-here")
    assert code_of(head.value) == "404"  # HEAD has no body, so no "NoSuchBucket" code
    bucket = s3_server.create_bucket()
    with pytest.raises(ClientError) as get:
        client.get_object(Bucket=bucket, Key="no-such-key")
    assert code_of(get.value) == "NoSuchKey"


# -- the environment a subprocess gets -----------------------------------------------------------

CHAIN_CLIENT = textwrap.dedent(
    """
    import sys, boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
    client.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=b"from the chain")
    """
)


@pytest.mark.parametrize("profile", [False, True], ids=["environment", "profile"])
def test_env_gives_a_subprocess_credentials_through_the_standard_chain(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, profile: bool
) -> None:
    # A host with its own ~/.aws, and stray keys in the environment: neither may leak in.
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = HOSTKEY\naws_secret_access_key = x\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update(HOME=str(tmp_path), USERPROFILE=str(tmp_path), **s3_server.env(profile=profile))
    key = f"chain-{profile}"
    completed = subprocess.run(
        [sys.executable, "-c", CHAIN_CLIENT, s3_server.endpoint, s3_bucket, key],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"from the chain"
    assert ("AWS_ACCESS_KEY_ID" in s3_server.env(profile=profile)) is not profile


# -- boto3 facts the S3 store builds on ------------------------------------------------------------


def test_multipart_upload_file_with_sha256_carries_a_composite_checksum_and_our_metadata(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """20 MB with 8 MiB parts: 3 parts, each SHA-256 checked; the object's checksum is of the parts, not the file."""
    source = tmp_path / "archive.zip"
    source.write_bytes(os.urandom(20_000_000))
    whole = hashlib.sha256(source.read_bytes()).hexdigest()
    client = s3_server.client()
    client.upload_file(
        str(source),
        s3_bucket,
        "archive.zip",
        ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": whole}},
        Config=TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB),
    )
    head = client.head_object(Bucket=s3_bucket, Key="archive.zip", ChecksumMode="ENABLED")
    assert head["ContentLength"] == 20_000_000
    assert head["Metadata"] == {"sha256": whole}
    assert head["ChecksumType"] == "COMPOSITE"
    assert head["ChecksumSHA256"].endswith("-3")
    assert head["ETag"].endswith('-3"')
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_single_part_put_reports_the_whole_sha256_on_head(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    body = b"small archive"
    client.put_object(Bucket=s3_bucket, Key="k", Body=body, ChecksumAlgorithm="SHA256")
    assert client.head_object(Bucket=s3_bucket, Key="k", ChecksumMode="ENABLED")["ChecksumSHA256"] == b64(
        hashlib.sha256(body).digest()
    )
    assert "ChecksumSHA256" not in client.head_object(Bucket=s3_bucket, Key="k")  # only when asked


def test_if_none_match_never_overwrites(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert (code_of(refused.value), refused.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "PreconditionFailed",
        412,
    )
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"first"


def test_upload_file_refuses_if_none_match_but_an_event_hook_adds_it(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """s3transfer rejects IfNoneMatch in ExtraArgs; adding it to PutObject and CompleteMultipartUpload works."""
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"s" * 100)
    big.write_bytes(os.urandom(12 * MIB))
    parts = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    client = s3_server.client(config=Config())  # a client of its own: the hook below must not reach other tests
    with pytest.raises(ValueError, match="IfNoneMatch"):
        client.upload_file(str(small), s3_bucket, "small", ExtraArgs={"IfNoneMatch": "*"})

    def never_overwrite(params: dict[str, Any], **_: Any) -> None:
        params["IfNoneMatch"] = "*"

    for operation in ("PutObject", "CompleteMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{operation}", never_overwrite)
    for path in (small, big):
        client.upload_file(str(path), s3_bucket, path.name, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=parts)
        with pytest.raises(S3UploadFailedError) as refused:
            client.upload_file(str(path), s3_bucket, path.name, Config=parts)
        assert code_of(refused.value) == "PreconditionFailed"
        assert client.head_object(Bucket=s3_bucket, Key=path.name)["ContentLength"] == path.stat().st_size
    # s3transfer aborted the multipart upload whose completion was refused.
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_refused_complete_leaves_the_multipart_upload_for_the_caller_to_abort(
    s3_server: S3Server, s3_bucket: str
) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"first")
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="k", ChecksumAlgorithm="SHA256")["UploadId"]
    part = client.upload_part(
        Bucket=s3_bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"second", ChecksumAlgorithm="SHA256"
    )
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(
            Bucket=s3_bucket,
            Key="k",
            UploadId=upload,
            IfNoneMatch="*",
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]}]
            },
        )
    assert code_of(refused.value) == "PreconditionFailed"
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]] == [upload]
    client.abort_multipart_upload(Bucket=s3_bucket, Key="k", UploadId=upload)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"first"


def test_a_dead_endpoint_fails_fast_with_standard_retries(tmp_path: Path) -> None:
    """botocore 1.44's default is 'standard' mode, 3 attempts: a refused connection fails in well under a second."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )
    attempts: list[object] = []
    client.meta.events.register("before-send.s3", lambda **_: attempts.append(None))
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket="b")
    assert len(attempts) == 3


# -- start and stop ----------------------------------------------------------------------------------


def grpc_sockets(server: S3Server) -> list[Path]:
    return [path for path in server.socket_files() if path.exists()]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the stray socket files are a POSIX /tmp matter")
def test_a_killed_server_leaves_no_process_and_no_socket_files(tmp_path: Path) -> None:
    server = S3Server(tmp_path)
    server.start()
    process = server._process
    assert process is not None
    assert grpc_sockets(server), "weed no longer writes its sockets to /tmp: drop the clean-up"
    process.kill()  # as if it crashed: nothing removes its sockets
    process.wait()
    server.stop()
    assert grpc_sockets(server) == []
    assert process.poll() is not None


def test_a_server_that_cannot_start_says_why_with_its_log(tmp_path: Path) -> None:
    # Python is not weed: it exits at once, complaining about the arguments.
    server = S3Server(tmp_path, weed=Path(sys.executable))
    with pytest.raises(
        S3ServerError, match=r"failed to start: it exited with status \d+; its log ends:\n.*Unknown option"
    ):
        server.start(timeout=30)
    assert not server.running
