"""Delivery against a real S3 API on loopback (moto in server mode), plus the size budget and base64 memory.

Bad credentials: moto accepts any key unless IAM authentication is on. The fixture creates an IAM user with
an s3:* policy while authentication is off, then tests that need it switch it on through moto's
``/moto-api/reset-auth`` (the server-mode form of ``INITIAL_NO_AUTH_ACTION_COUNT=0``). Moto answers presigned
GETs with 500 while IAM auth is on, so it is switched back off after each such test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import requests

from tenexa.config import load_settings
from tenexa.delivery import JSON_HEADROOM_BYTES, base64_length, deliver, encode_inline
from tenexa.errors import ErrorCode, TenexaError

BUCKET = "tenexa-videos"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """A moto server process on 127.0.0.1 with one bucket and one IAM user allowed s3:*."""

    def __init__(self):
        import boto3

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        admin = {"endpoint_url": self.url, "region_name": "us-east-1", "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="tenexa")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="tenexa", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="tenexa")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.admin_s3 = boto3.client("s3", **admin)
        self.admin_s3.create_bucket(Bucket=BUCKET)

    def require_auth(self, on: bool) -> None:
        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0" if on else b"inf", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def moto_s3():
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def auth_on(moto_s3):
    moto_s3.require_auth(True)
    yield moto_s3
    moto_s3.require_auth(False)


def settings_for(moto_s3=None, **env) -> object:
    base = {"MAX_RESPONSE_MB": "15"}
    if moto_s3 is not None:
        base.update(
            BUCKET_ENDPOINT_URL=moto_s3.url,
            BUCKET_NAME=BUCKET,
            BUCKET_ACCESS_KEY_ID=moto_s3.access_key_id,
            BUCKET_SECRET_ACCESS_KEY=moto_s3.secret_access_key,
        )
    base.update(env)
    return load_settings(base)


@pytest.fixture(scope="module")
def small_mp4(tmp_path_factory) -> Path:
    """A real H.264 MP4 (24 frames, 64x64) made with PyAV."""
    import av
    from PIL import Image

    path = tmp_path_factory.mktemp("video") / "tenexa_00001.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 16)
        for i in range(24):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 64), (i * 10 % 255, 80, 160)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# --- base64 -----------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_base64_round_trips_the_video(small_mp4):
    result = deliver(small_mp4, job_id="j-b64", mode="base64", settings=settings_for())
    raw = small_mp4.read_bytes()
    assert result["delivery"] == "base64"
    assert base64.b64decode(result["video_base64"]) == raw
    assert result["size_bytes"] == len(raw) and result["sha256"] == _sha256(raw)
    assert small_mp4.exists(), "the caller deletes the video, not deliver()"


@pytest.mark.unit
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 786431, 786432, 786433, 2 * 786432 + 5])
def test_base64_matches_the_stdlib_at_chunk_edges(tmp_path, size):
    path = _random_file(tmp_path / "v.mp4", size)
    assert encode_inline(path)["video_base64"] == base64.b64encode(path.read_bytes()).decode()


@pytest.mark.unit
def test_base64_peak_memory_stays_near_twice_the_video(tmp_path):
    size = 6_000_000
    path = _random_file(tmp_path / "big.mp4", size)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = encode_inline(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result["video_base64"]) == base64_length(size)
    # The base64 text itself is 4/3 of the video and must exist; the one working buffer is another 4/3.
    assert peak <= 2.85 * size, f"peak {peak / size:.2f}x the video"


@pytest.mark.unit
def test_caller_sha256_is_passed_through(small_mp4):
    result = deliver(small_mp4, job_id="j", mode="base64", settings=settings_for(), sha256="abc")
    assert result["sha256"] == "abc"


# --- the size budget --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_too_large_without_a_bucket_is_output_too_large(tmp_path):
    path = _random_file(tmp_path / "v.mp4", 200_000)
    settings = settings_for(MAX_RESPONSE_MB="0.2")  # 200 kB budget; the base64 is 267 kB
    with pytest.raises(TenexaError) as info:
        deliver(path, job_id="j-big", mode="base64", settings=settings)
    err = info.value
    assert err.code is ErrorCode.OUTPUT_TOO_LARGE
    assert "0.2 MB (0.3 MB as base64)" in err.message and "MAX_RESPONSE_MB" in err.message
    assert "BUCKET_ENDPOINT_URL" in err.message and "frames" in err.message
    assert "\n" not in err.message


@pytest.mark.unit
def test_budget_edge_counts_base64_and_headroom(tmp_path):
    size = 300_000
    path = _random_file(tmp_path / "v.mp4", size)
    exact_mb = (base64_length(size) + JSON_HEADROOM_BYTES) / 1_000_000
    assert deliver(path, job_id="j", mode="base64", settings=settings_for(MAX_RESPONSE_MB=str(exact_mb)))["delivery"] == "base64"
    with pytest.raises(TenexaError) as info:
        deliver(path, job_id="j", mode="base64", settings=settings_for(MAX_RESPONSE_MB=str(exact_mb - 0.000001)))
    assert info.value.code is ErrorCode.OUTPUT_TOO_LARGE


@pytest.mark.contract
def test_too_large_with_a_bucket_switches_to_url(moto_s3, small_mp4):
    settings = settings_for(moto_s3, MAX_RESPONSE_MB="0.01")
    result = deliver(small_mp4, job_id="j-switch", mode="base64", settings=settings)
    assert result["delivery"] == "url"
    assert "video_base64" not in result
    assert "MAX_RESPONSE_MB" in result["delivery_note"] and "URL" in result["delivery_note"]
    assert requests.get(result["video_url"], timeout=10).content == small_mp4.read_bytes()


# --- url ----------------------------------------------------------------------------------------------------


@pytest.mark.contract
def test_url_upload_downloads_the_same_bytes(moto_s3, small_mp4):
    settings = settings_for(moto_s3, URL_EXPIRY="600")
    before = time.time()
    result = deliver(small_mp4, job_id="job-42", mode="url", settings=settings)
    raw = small_mp4.read_bytes()
    assert result["delivery"] == "url"
    assert result["bucket"] == BUCKET
    assert result["object_key"] == "tenexa/job-42/tenexa_00001.mp4"
    assert result["size_bytes"] == len(raw) and result["sha256"] == _sha256(raw)
    assert result["expires_at"].endswith("Z")
    from datetime import datetime

    expires = datetime.fromisoformat(result["expires_at"].replace("Z", "+00:00")).timestamp()
    assert before + 600 - 2 <= expires <= time.time() + 600 + 1
    assert "X-Amz-Expires=600" in result["video_url"]
    assert f"/{BUCKET}/tenexa/job-42/" in result["video_url"], "path-style URL"

    response = requests.get(result["video_url"], timeout=10)
    assert response.status_code == 200
    assert _sha256(response.content) == _sha256(raw)
    assert response.headers["Content-Type"] == "video/mp4"
    assert small_mp4.exists()
    # The secret key never travels; the key id is part of every SigV4 presigned URL (X-Amz-Credential).
    assert moto_s3.secret_access_key not in json.dumps(result)


@pytest.mark.contract
def test_url_streams_a_multipart_upload(moto_s3, tmp_path):
    path = _random_file(tmp_path / "big.mp4", 9 * 1024 * 1024)  # over the 8 MiB part size
    result = deliver(path, job_id="job-mp", mode="url", settings=settings_for(moto_s3))
    assert _sha256(requests.get(result["video_url"], timeout=30).content) == _sha256(path.read_bytes())


@pytest.mark.unit
def test_url_without_a_bucket_is_upload_failed(small_mp4):
    with pytest.raises(TenexaError) as info:
        deliver(small_mp4, job_id="j", mode="url", settings=settings_for())
    assert info.value.code is ErrorCode.UPLOAD_FAILED
    assert info.value.message.startswith("output=url needs BUCKET_ENDPOINT_URL and BUCKET_NAME")


@pytest.mark.unit
def test_unknown_mode_is_invalid_input(small_mp4):
    with pytest.raises(TenexaError) as info:
        deliver(small_mp4, job_id="j", mode="s3", settings=settings_for())
    assert info.value.code is ErrorCode.INVALID_INPUT


def _assert_no_secret(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


@pytest.mark.contract
def test_missing_bucket_is_upload_failed(moto_s3, small_mp4, caplog, capfd):
    settings = settings_for(moto_s3, BUCKET_NAME="no-such-bucket")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TenexaError) as info:
        deliver(small_mp4, job_id="j", mode="url", settings=settings)
    assert info.value.code is ErrorCode.UPLOAD_FAILED
    assert "NoSuchBucket" in info.value.message and "BUCKET_NAME" in info.value.message
    out, err = capfd.readouterr()
    _assert_no_secret([info.value.message, str(info.value), caplog.text, out, err], moto_s3.secret_access_key, moto_s3.access_key_id)


@pytest.mark.contract
@pytest.mark.parametrize("which", ["secret", "key_id"])
def test_bad_credentials_are_upload_failed_without_leaking_them(auth_on, small_mp4, caplog, capfd, which):
    bad_secret = "Wr0ngSecretKeyForTenexaTests0123456789ab"
    env = {"BUCKET_SECRET_ACCESS_KEY": bad_secret} if which == "secret" else {"BUCKET_ACCESS_KEY_ID": "AKIAWRONGTENEXA00000"}
    settings = settings_for(auth_on, **env)
    caplog.set_level(logging.DEBUG)  # botocore logs signed headers at DEBUG; they must stay quiet
    with pytest.raises(TenexaError) as info:
        deliver(small_mp4, job_id="j-auth", mode="url", settings=settings)
    err = info.value
    assert err.code is ErrorCode.UPLOAD_FAILED
    assert ("SignatureDoesNotMatch" if which == "secret" else "InvalidAccessKeyId") in err.message
    assert "BUCKET_ACCESS_KEY_ID" in err.message and "\n" not in err.message
    out, stderr = capfd.readouterr()
    _assert_no_secret(
        [err.message, str(err), caplog.text, out, stderr], *settings.secrets(), auth_on.secret_access_key, auth_on.access_key_id
    )


@pytest.mark.contract
def test_good_credentials_pass_with_auth_on(auth_on, small_mp4):
    # Proves the bad-credential tests fail for the credentials, not because auth breaks uploads altogether.
    result = deliver(small_mp4, job_id="j-auth-ok", mode="url", settings=settings_for(auth_on))
    auth_on.require_auth(False)
    body = auth_on.admin_s3.get_object(Bucket=BUCKET, Key=result["object_key"])["Body"].read()
    assert body == small_mp4.read_bytes()


@pytest.mark.contract
def test_unreachable_endpoint_fails_within_seconds(small_mp4, caplog):
    closed_port = _free_port()
    settings = settings_for(
        BUCKET_ENDPOINT_URL=f"http://tenexa-user:pa55w0rd-in-url@127.0.0.1:{closed_port}",
        BUCKET_NAME=BUCKET,
        BUCKET_ACCESS_KEY_ID="AKIAUNREACHABLE00000",
        BUCKET_SECRET_ACCESS_KEY="unreachable-secret-value",
    )
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(TenexaError) as info:
        deliver(small_mp4, job_id="j", mode="url", settings=settings)
    assert time.monotonic() - started < 10
    assert info.value.code is ErrorCode.UPLOAD_FAILED
    assert "cannot reach BUCKET_ENDPOINT_URL" in info.value.message
    _assert_no_secret([info.value.message, caplog.text], "pa55w0rd-in-url", *settings.secrets())


@pytest.mark.unit
def test_secrets_are_scrubbed_from_any_error_text():
    from tenexa.delivery import scrub

    settings = replace(settings_for(), bucket_access_key_id="AKIAEXAMPLE", bucket_secret_access_key="s3cr3t")
    text = scrub("failed at https://user:pw@host/x with AKIAEXAMPLE and s3cr3t\nsecond line", settings)
    assert text == "failed at https://host/x with *** and *** second line"
