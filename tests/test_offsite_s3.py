"""What is specific to S3 remotes, against the real S3 test server, through `invoke`.

Credentials refused, a missing bucket, a copy under Object Lock during retention,
multipart uploads with per-part checksums, the SHA-256 kept in the object's
metadata, and secrets that never appear in any output, log or JSON document.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, archive_file_name, flow
from s3server import S3Server
from test_offsite import START, S3Remote, site


def manifest(project: Project, server: S3Server, bucket: str, **remote: Any) -> None:
    spec = {"type": "s3", "bucket": bucket, "endpoint": server.endpoint, "addressing_style": "path", **remote}
    _one_s3_target(project, spec, keep="{last: 10}")


def _one_s3_target(project: Project, spec: dict[str, Any], keep: str | None = None) -> None:
    """A manifest of the target `site`, copied to the remote `offsite` that `spec` describes."""
    kept = f", keep: {keep}" if keep else ""
    project.write_manifest(
        f"""
        version: 1
        remotes:
          offsite: {flow(spec)}
        targets:
          - {{name: site, path: site, offsite: [offsite]{kept}}}
        """
    )


@pytest.mark.parametrize(
    ("identity", "reason"),
    [("wrong-secret", "access denied (SignatureDoesNotMatch)"), ("unknown", "access denied (InvalidAccessKeyId)")],
)
def test_refused_credentials_fail_the_target_in_one_sentence_without_the_secret(
    project: Project, s3_server: S3Server, s3_bucket: str, identity: str, reason: str, tmp_path: Path
) -> None:
    result, everything = _failed_backup(project, s3_server, s3_bucket, s3_server.env(identity), tmp_path)
    assert reason in result["error"] and "remote offsite" in result["error"]
    assert len(project.archives()) == 1  # the local archive is made and kept
    secret, key = s3_server.identities[identity].secret_key, s3_server.identities[identity].access_key
    assert secret not in everything and key not in everything


def _failed_backup(
    project: Project, s3_server: S3Server, bucket: str, env: dict[str, str], tmp_path: Path
) -> tuple[dict[str, Any], str]:
    """A backup of `site` to the bucket that fails (exit 1, no traceback): its one target's JSON
    result, and everything it wrote (standard output and error, and its log file)."""
    site(project)
    manifest(project, s3_server, bucket)
    log = tmp_path / "run.log"
    ran = project.invoke("backup", "--format", "json", "--log-file", str(log), env=env)
    assert ran.code == 1, ran.output
    [result] = ran.json()["targets"]
    assert result["status"] == "failed"
    everything = ran.output + log.read_text(encoding="utf-8")
    assert "Traceback" not in everything
    return result, everything


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEleakTOKEN\r"), ("AWS_ACCESS_KEY_ID", "AKIDXLEAK\nYQZW7")],
)
def test_a_credential_with_a_stray_line_end_is_named_without_showing_it(
    project: Project, s3_server: S3Server, s3_bucket: str, variable: str, value: str, tmp_path: Path
) -> None:
    # The HTTP client refused the header and its error quoted it whole: the session token, or
    # with a newline in the key id the whole Authorization header with its signature.
    result, everything = _failed_backup(project, s3_server, s3_bucket, s3_server.env() | {variable: value}, tmp_path)
    assert "a credential holds a character no HTTP header may" in result["error"], result["error"]
    for piece in (value.strip(), "Signature=", "IQoJb3JpZ2lu", "AKIDXLEAK", "YQZW7"):
        assert piece not in everything, piece


def test_a_missing_bucket_is_named(project: Project, s3_server: S3Server) -> None:
    site(project)
    manifest(project, s3_server, "no-such-bucket-here")
    ran = project.invoke("backup", env=s3_server.env())
    assert ran.code == 1
    assert "bucket no-such-bucket-here does not exist" in ran.stdout


def test_an_unreachable_endpoint_is_named_and_bounded(project: Project, s3_server: S3Server) -> None:
    site(project)
    manifest(project, s3_server, "anything", endpoint="http://127.0.0.1:9")  # discard port: nothing listens
    ran = project.invoke("backup", "--format", "json", env=s3_server.env(), timeout=120)
    assert ran.code == 1
    error = ran.json()["targets"][0]["error"]
    assert "cannot reach http://127.0.0.1:9" in error and "is kept" in error


@pytest.mark.parametrize("mistake", ["unresolvable", "https"])
def test_an_endpoint_written_wrong_says_which_way(project: Project, s3_server: S3Server, mistake: str) -> None:
    # A host name that does not resolve was "connection refused or no route"; https to a plain
    # http server gave the TLS library's raw text.
    site(project)
    endpoint = (
        "http://no-such-host.invalid:9000"
        if mistake == "unresolvable"
        else s3_server.endpoint.replace("http://", "https://")
    )
    manifest(project, s3_server, "anything", endpoint=endpoint)
    ran = project.invoke("backup", "--format", "json", env=s3_server.env(), timeout=120)
    assert ran.code == 1, ran.output
    error = ran.json()["targets"][0]["error"]
    said = {
        "unresolvable": f"the host name of {endpoint} cannot be resolved; check the endpoint's spelling and DNS",
        "https": f"{endpoint} does not answer in TLS: is it an http:// endpoint written as https://?",
    }[mistake]
    assert said in error, error


def test_a_remote_that_cannot_be_reached_is_asked_once_per_run_and_the_others_still_get_their_copies(
    project: Project, s3_server: S3Server, s3_bucket: str
) -> None:
    # Asked again for every target, a service that accepts connections and never answers cost
    # each one 3 tries of 30 s: three small targets took four and a half minutes.  A refused
    # connection takes the same path, quickly.
    for name in ("a", "b", "c"):
        project.file(f"{name}/file.txt", name)
    dead = {"type": "s3", "bucket": "anything", "endpoint": "http://127.0.0.1:9", "addressing_style": "path"}
    alive = {"type": "s3", "bucket": s3_bucket, "endpoint": s3_server.endpoint, "addressing_style": "path"}
    project.write_manifest(
        f"""
        version: 1
        remotes: {{dead: {flow(dead)}, alive: {flow(alive)}}}
        defaults: {{offsite: [dead, alive]}}
        targets: [{{name: a, path: a}}, {{name: b, path: b}}, {{name: c, path: c}}]
        """
    )

    ran = project.invoke("backup", "--format", "json", "--jobs", "1", env=s3_server.env(), timeout=120)

    assert ran.code == 1, ran.output
    errors = [t["error"] for t in ran.json()["targets"]]
    assert "remote dead: cannot list the bucket: cannot reach http://127.0.0.1:9" in errors[0], errors[0]
    for later in errors[1:]:
        assert "remote dead: not asked again in this run: cannot reach http://127.0.0.1:9" in later, later
        assert "is kept" in later
    copies = s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert sorted(c["Key"].split("/")[0] for c in copies) == ["a", "b", "c"]  # the other remote got every copy
    assert len(project.archives()) == 3


def test_the_archives_sha256_is_recorded_in_the_objects_metadata(
    project: Project, s3_server: S3Server, s3_bucket: str
) -> None:
    site(project)
    manifest(project, s3_server, s3_bucket, prefix="host1/", storage_class="STANDARD")
    assert project.invoke("backup", env=s3_server.env()).code == 0
    [archive] = project.archives()
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"host1/site/{archive.name}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert head["ContentLength"] == archive.stat().st_size


@pytest.mark.slow
def test_with_checksum_md5_every_part_of_a_large_upload_carries_its_content_md5(
    project: Project, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README promises Content-MD5 with `checksum: md5`; past 64 MiB the parts carried no
    # checksum at all, and the service could not tell damaged bytes from sent ones.  The
    # headers cannot be seen from outside the process: the store is driven here, as a run
    # drives it, against the real server, which refuses a part whose Content-MD5 is wrong.
    from backup_core import manifest as manifest_module
    from backup_core.stores import offsite

    for variable, value in s3_server.env().items():
        monkeypatch.setenv(variable, value)
    big = project.file("site/big.bin", os.urandom(70 << 20))
    manifest(project, s3_server, s3_bucket, checksum="md5")
    store = offsite.store_for(manifest_module.load(project.manifest).remotes["offsite"])
    parts: list[tuple[str, int]] = []

    def seen(request: Any, **_: Any) -> None:
        parts.append((request.headers.get("Content-MD5", ""), int(request.headers["Content-Length"])))

    store.client.meta.events.register("before-send.s3.UploadPart", seen)
    name = archive_file_name("site", START)
    stored = store.put("site", big, name, hashlib.sha256(big.read_bytes()).hexdigest())

    assert stored.size == big.stat().st_size
    assert len(parts) >= 2 and sum(size for _, size in parts) == big.stat().st_size
    assert all(len(md5) == 24 for md5, _ in parts), parts  # base64 of 16 bytes, on every part
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"site/{name}")
    assert head["ContentLength"] == big.stat().st_size


@pytest.mark.slow
def test_a_large_archive_goes_up_in_parts_and_is_confirmed(
    project: Project, s3_server: S3Server, s3_bucket: str
) -> None:
    project.file("site/big.bin", os.urandom(70 << 20))  # past the 64 MiB multipart threshold
    manifest(project, s3_server, s3_bucket)
    ran = project.invoke("backup", "--format", "json", env=s3_server.env())
    assert ran.code == 0, ran.output
    [archive] = project.archives()
    remote = S3Remote(s3_server, s3_bucket, prefix="")
    assert hashlib.sha256(remote.read("site", archive.name)).digest() == hashlib.sha256(archive.read_bytes()).digest()
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"site/{archive.name}")
    assert head["ETag"].strip('"').endswith(("-5", "-4", "-6"))  # a multipart ETag: no checksum of the whole
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket)
    assert not uploads.get("Uploads")
    assert project.invoke("verify", "--remote", "offsite", env=s3_server.env()).code == 0


def test_an_upload_left_pending_by_a_dead_run_is_aborted_when_that_archive_goes_up_again(
    project: Project, s3_server: S3Server, s3_bucket: str
) -> None:
    # A run that lost the server mid-upload could not abort it: its parts stay, and are billed.
    site(project)
    manifest(project, s3_server, s3_bucket)
    client = s3_server.client()
    left = f"site/{archive_file_name('site', START)}"
    young = f"site/{archive_file_name('site', START - timedelta(hours=1))}"  # another archive, pending an hour
    foreign = "other/notes.zip"  # not this target's: never touched
    for key in (left, young, foreign):
        upload = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        client.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)

    ran = project.invoke("backup", env={**s3_server.env(), "BACKUP_NOW": START.isoformat()})

    assert ran.code == 0, ran.output
    pending = sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []))
    assert pending == sorted([young, foreign])
    assert S3Remote(s3_server, s3_bucket, prefix="").names("site") == [archive_file_name("site", START)]


def test_a_copy_under_object_lock_is_reported_kept_not_failed(project: Project, s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket(object_lock=True)
    site(project)
    manifest(project, s3_server, bucket, keep={"last": 1})
    first = project.invoke("backup", env={**s3_server.env(), "BACKUP_NOW": START.isoformat()})
    assert first.code == 0, first.output
    [name] = S3Remote(s3_server, bucket, prefix="").names("site")
    s3_server.client().put_object_retention(
        Bucket=bucket,
        Key=f"site/{name}",
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": s3_server.retain_until(days=1)},
    )
    later = {**s3_server.env(), "BACKUP_NOW": (START + timedelta(days=1)).isoformat()}
    second = project.invoke("backup", "--format", "json", env=later)
    assert second.code == 0, second.output
    [copy] = second.json()["targets"][0]["offsite"]
    assert copy["locked"] == [name] and copy["deleted"] == [] and copy["error"] is None
    assert name in S3Remote(s3_server, bucket, prefix="").names("site")
    assert "kept by a retention lock" in second.stderr


def test_a_profile_from_the_shared_credentials_file_works(
    project: Project, s3_server: S3Server, s3_bucket: str
) -> None:
    site(project)
    manifest(project, s3_server, s3_bucket, profile="writer")
    env = s3_server.env(profile=True)
    del env["AWS_PROFILE"]  # the manifest names it
    ran = project.invoke("backup", env=env)
    assert ran.code == 0, ran.output
    assert S3Remote(s3_server, s3_bucket, prefix="").names("site") == [p.name for p in project.archives()]


# --- errors that come before any request: no server needed --------------------------------------


@pytest.fixture
def own_aws(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Variables for a run that reads only this test's AWS files (none of the host's AWS_*)."""
    folder = tmp_path / "aws"
    folder.mkdir()
    (folder / "credentials").write_text("", encoding="utf-8")
    (folder / "config").write_text("", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            patch.delenv(name)
        yield {
            "AWS_CONFIG_FILE": str(folder / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def s3_project(project: Project, **remote: Any) -> None:
    site(project)
    _one_s3_target(project, {"type": "s3", "bucket": "acme-backups", "region": "us-east-1", **remote})


@pytest.mark.parametrize(
    ("variable", "url", "shown"),
    [
        # The client library's own sentences quote the URL as given: "Custom endpoint `…` was not
        # a valid URI", "Invalid endpoint: …".
        ("AWS_ENDPOINT_URL", "http://ops:Zendpoint1@127.0.0.1:1/path?x=Zquery2", "http://***@127.0.0.1:1/path?x=***"),
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1/?token=Zquery2", "http://127.0.0.1:1/?token=***"),
        ("AWS_ENDPOINT_URL", "http://ops:Zendpoint1@bad_host:9/", "http://***@bad_host:9/"),
    ],
)
def test_an_endpoint_url_from_the_environment_is_named_without_its_credentials(
    project: Project, own_aws: dict[str, str], tmp_path: Path, variable: str, url: str, shown: str
) -> None:
    s3_project(project)
    env = {**own_aws, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "Zkey3", variable: url}
    log = tmp_path / "run.log"

    ran = project.invoke("backup", "--format", "json", "--log-file", str(log), env=env, timeout=120)
    status = project.invoke("status", env=env, timeout=120)

    assert ran.code == 1 and status.code == 1, ran.output
    error = ran.json()["targets"][0]["error"]
    assert "remote offsite" in error and shown in error, error
    assert shown in status.stdout, status.stdout
    everything = ran.output + status.output + log.read_text(encoding="utf-8")
    assert not any(secret in everything for secret in ("Zendpoint1", "Zquery2", "Zkey3")), everything


def _vault_profile(project: Project, own_aws: dict[str, str], helper: str) -> None:
    """A manifest whose remote uses the AWS profile `vault`, whose credential_process runs `helper`
    (Python); its endpoint listens nowhere, and no request is ever sent."""
    Path(own_aws["AWS_CONFIG_FILE"]).write_text(
        f'[profile vault]\ncredential_process = "{sys.executable}" -c "{helper}"\n', encoding="utf-8"
    )
    s3_project(project, profile="vault", endpoint="http://127.0.0.1:9")


def test_a_failing_credential_process_is_named_without_its_output(
    project: Project, own_aws: dict[str, str], tmp_path: Path
) -> None:
    # botocore's message was the helper's stderr, verbatim: a helper may echo what it fetched.
    _vault_profile(project, own_aws, "import sys; sys.stderr.write('token Zprocess1 expired'); sys.exit(3)")
    log = tmp_path / "run.log"

    ran = project.invoke("backup", "--format", "json", "--log-file", str(log), env=own_aws, timeout=120)
    status = project.invoke("status", env=own_aws, timeout=120)

    assert ran.code == 1 and status.code == 1, ran.output
    error = ran.json()["targets"][0]["error"]
    assert "the credential_process of AWS profile vault failed" in error, error
    assert "the credential_process of AWS profile vault failed" in status.stdout, status.stdout
    everything = ran.output + status.output + log.read_text(encoding="utf-8")
    assert "Zprocess1" not in everything, everything


def test_a_credential_process_that_prints_no_json_is_named(
    project: Project, own_aws: dict[str, str], tmp_path: Path
) -> None:
    # The line was "JSONDecodeError: Expecting value: line 1 column 1 (char 0)": neither the
    # profile nor the helper named.
    _vault_profile(project, own_aws, "print('aws_secret_access_key=Zplain4')")

    ran = project.invoke("backup", "--format", "json", env=own_aws, timeout=120)

    assert ran.code == 1, ran.output
    error = ran.json()["targets"][0]["error"]
    said = "the credentials of AWS profile vault could not be read: its credential_process (or a credentials cache)"
    assert said in error and "printed no valid JSON" in error, error
    assert "Zplain4" not in ran.output


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"AWS_PROFILE": "nosuchprofile"}, "AWS_PROFILE"),
        # botocore reads AWS_DEFAULT_PROFILE first: advice to unset AWS_PROFILE would change nothing.
        ({"AWS_PROFILE": "writer", "AWS_DEFAULT_PROFILE": "nosuchprofile"}, "AWS_DEFAULT_PROFILE"),
    ],
)
def test_an_unknown_profile_from_the_environment_is_named_with_where_it_came_from(
    project: Project, own_aws: dict[str, str], given: dict[str, str], named: str
) -> None:
    # A manifest's profile: is checked when it is loaded; one from the environment only at the request.
    s3_project(project, endpoint="http://127.0.0.1:9")  # no request is ever sent
    env = {**own_aws, **given}

    ran = project.invoke("backup", "--format", "json", env=env, timeout=120)

    assert ran.code == 1, ran.output
    error = ran.json()["targets"][0]["error"]
    assert f"AWS profile 'nosuchprofile' (named by {named}) is in neither" in error, error
    assert f"unset {named}" in error, error
