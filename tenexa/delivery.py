"""Hand a finished video to the caller: inline as base64, or as a presigned link to an S3-compatible bucket.

RunPod drops results above its payload limit without telling the caller (a COMPLETED job with no output),
so base64 is only used while it fits ``MAX_RESPONSE_MB``; a bigger video goes to the bucket when one is
configured and fails with ``OUTPUT_TOO_LARGE`` otherwise. Upload problems of any kind become
``UPLOAD_FAILED`` with a one-line message that names no credential. The video file is never deleted here:
the caller owns it and removes it at job end.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tenexa.config import Settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.files import sha256_file

log = logging.getLogger("tenexa.delivery")

DELIVERY_MODES = ("base64", "url")
JSON_HEADROOM_BYTES = 64 * 1024  # the rest of the response (keys, sha256, ids) and RunPod's envelope
BYTES_PER_MB = 1_000_000  # MAX_RESPONSE_MB is decimal megabytes, the unit RunPod states its limits in
READ_CHUNK_BYTES = 3 * 256 * 1024  # a multiple of 3, so chunk encodings concatenate without padding
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot outlive 7 days
UPLOAD_PART_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4  # parts in flight; bounds upload memory to about 4 parts

# botocore logs signed request headers (the access key id among them) at DEBUG; a worker whose root logger
# runs at DEBUG must still not print them.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def base64_length(size_bytes: int) -> int:
    return 4 * ((size_bytes + 2) // 3)


def response_budget_bytes(settings: Settings) -> int:
    return int(settings.max_response_mb * BYTES_PER_MB)


def fits_inline(size_bytes: int, settings: Settings, extra_bytes: int = 0) -> bool:
    """Whether a video of this size can travel as base64 inside the JSON response (beside ``extra_bytes``)."""
    return base64_length(size_bytes) + extra_bytes + JSON_HEADROOM_BYTES <= response_budget_bytes(settings)


def deliver(video_path: Path, *, job_id: str, mode: str, settings: Settings, sha256: str | None = None,
            content_type: str = "video/mp4", extra_bytes: int = 0) -> dict:
    """Return the response fields that carry the video (``delivery`` says which way it went).

    ``extra_bytes`` is what else the response carries inline (the last frame's base64): base64 delivery
    only happens when the video fits beside it.
    """
    if mode not in DELIVERY_MODES:
        raise TenexaError(ErrorCode.INVALID_INPUT, f"output: expected one of {', '.join(DELIVERY_MODES)}, got {mode!r}")
    video_path = Path(video_path)
    try:
        size = video_path.stat().st_size
    except OSError as exc:
        raise TenexaError(ErrorCode.INTERNAL_ERROR, f"cannot read the finished video: {exc.strerror}") from None

    if mode == "url":
        return upload_and_link(video_path, job_id=job_id, settings=settings, sha256=sha256, content_type=content_type)

    if fits_inline(size, settings, extra_bytes):
        return encode_inline(video_path, sha256=sha256)

    budget_mb = settings.max_response_mb
    size_text = f"{size / BYTES_PER_MB:.1f} MB ({base64_length(size) / BYTES_PER_MB:.1f} MB as base64)"
    if settings.bucket_configured:
        log.info("job %s: video of %s exceeds MAX_RESPONSE_MB=%g, delivering by URL", job_id, size_text, budget_mb)
        result = upload_and_link(video_path, job_id=job_id, settings=settings, sha256=sha256, content_type=content_type)
        result["delivery_note"] = (
            f"output=base64 was requested, but the video is {size_text}, over the {budget_mb:g} MB response "
            "budget (MAX_RESPONSE_MB); delivered as a URL instead"
        )
        return result
    raise TenexaError(
        ErrorCode.OUTPUT_TOO_LARGE,
        f"the video is {size_text}, over the {budget_mb:g} MB response budget (MAX_RESPONSE_MB); configure a bucket "
        "(BUCKET_ENDPOINT_URL, BUCKET_NAME, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) to receive a URL, "
        "or lower frames, width or height",
        details={"size_bytes": size, "base64_bytes": base64_length(size), "budget_bytes": response_budget_bytes(settings)},
    )


def deliver_files(files: list[tuple[Path, str, str]], *, job_id: str, mode: str, settings: Settings) -> dict:
    """Several files, given as (path, content type, sha256), all delivered the same way so a client handles one
    kind of answer: inline while all of them together fit ``MAX_RESPONSE_MB``, else all by URL when a bucket is
    configured (``delivery_note`` says why), else ``OUTPUT_TOO_LARGE``. Each entry is worker-comfyui's
    ``{"type": "base64" | "s3_url", "data": ...}`` plus what the single-file delivery reports."""
    if mode not in DELIVERY_MODES:
        raise TenexaError(ErrorCode.INVALID_INPUT, f"output: expected one of {', '.join(DELIVERY_MODES)}, got {mode!r}")
    total = sum(Path(path).stat().st_size for path, _, _ in files)
    inline = mode == "base64" and sum(base64_length(Path(p).stat().st_size) for p, _, _ in files) + JSON_HEADROOM_BYTES \
        <= response_budget_bytes(settings)
    note = None
    if mode == "base64" and not inline:
        budget_mb = settings.max_response_mb
        size_text = f"{len(files)} file(s) of {total / BYTES_PER_MB:.1f} MB in all"
        if not settings.bucket_configured:
            raise TenexaError(
                ErrorCode.OUTPUT_TOO_LARGE,
                f"the outputs are {size_text}, over the {budget_mb:g} MB response budget (MAX_RESPONSE_MB) as base64; "
                "configure a bucket (BUCKET_ENDPOINT_URL, BUCKET_NAME, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) "
                "to receive URLs, or make fewer or smaller outputs",
                details={"size_bytes": total, "budget_bytes": response_budget_bytes(settings)},
            )
        note = (f"output=base64 was requested, but the outputs are {size_text}, over the {budget_mb:g} MB response "
                "budget (MAX_RESPONSE_MB); delivered as URLs instead")
        log.info("job %s: %s exceed MAX_RESPONSE_MB=%g, delivering by URL", job_id, size_text, budget_mb)
    entries = []
    for path, content_type, sha256 in files:
        if inline:
            encoded = encode_inline(Path(path), sha256=sha256)
            entries.append({"type": "base64", "data": encoded["video_base64"], "size_bytes": encoded["size_bytes"],
                            "sha256": encoded["sha256"]})
        else:
            linked = upload_and_link(Path(path), job_id=job_id, settings=settings, sha256=sha256, content_type=content_type)
            entries.append({"type": "s3_url", "data": linked["video_url"], "object_key": linked["object_key"],
                            "expires_at": linked["expires_at"], "size_bytes": linked["size_bytes"], "sha256": linked["sha256"]})
    result: dict[str, Any] = {"delivery": "base64" if inline else "url", "files": entries}
    if not inline:
        result["bucket"] = settings.bucket_name
    if note:
        result["delivery_note"] = note
    return result


# --- base64 -------------------------------------------------------------------------------------------


def encode_inline(video_path: Path, *, sha256: str | None = None) -> dict:
    """Base64 of the file, read in chunks into one preallocated buffer; the digest comes from the same pass.

    Peak memory is that buffer plus the returned ``str``, each 4/3 of the video (2.67x in all, measured in
    bench/delivery.py). A Python ``str`` can only be built from a complete buffer, so this is the floor
    short of growing a ``str`` in place, which measured quadratic (3.9 s for 60 MB). Inline delivery only
    runs under MAX_RESPONSE_MB (15 MB: a video of at most ~11 MB), so the peak stays around 30 MB.
    """
    size = video_path.stat().st_size
    encoded = bytearray(base64_length(size))
    digest = hashlib.sha256()
    pos = 0
    with video_path.open("rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            piece = binascii.b2a_base64(chunk, newline=False)
            encoded[pos : pos + len(piece)] = piece
            pos += len(piece)
    if pos != len(encoded):  # the file changed under us
        raise TenexaError(ErrorCode.INTERNAL_ERROR, f"the video changed while it was read ({pos} of {len(encoded)} bytes)")
    text = encoded.decode("ascii")
    del encoded
    return {
        "delivery": "base64",
        "video_base64": text,
        "size_bytes": size,
        "sha256": sha256 or digest.hexdigest(),
    }


# --- bucket ---------------------------------------------------------------------------------------------


def deliver_image(image_path: Path, *, name: str, job_id: str, video_delivery: str, settings: Settings) -> dict:
    """A PNG beside the video, the way the video went: ``<name>_base64`` inline, or ``<name>_url`` from the bucket."""
    if video_delivery == "url":
        linked = upload_and_link(image_path, job_id=job_id, settings=settings, content_type="image/png")
        return {f"{name}_url": linked["video_url"], f"{name}_object_key": linked["object_key"]}
    return {f"{name}_base64": binascii.b2a_base64(image_path.read_bytes(), newline=False).decode("ascii")}


def upload_and_link(video_path: Path, *, job_id: str, settings: Settings, sha256: str | None = None,
                    content_type: str = "video/mp4") -> dict:
    """Upload the file (streamed from disk) and return a presigned GET link to it."""
    missing = [
        env for env, value in (("BUCKET_ENDPOINT_URL", settings.bucket_endpoint_url), ("BUCKET_NAME", settings.bucket_name)) if not value
    ]
    if missing:
        raise TenexaError(
            ErrorCode.UPLOAD_FAILED,
            "output=url needs BUCKET_ENDPOINT_URL and BUCKET_NAME (with BUCKET_ACCESS_KEY_ID and "
            f"BUCKET_SECRET_ACCESS_KEY); not set: {', '.join(missing)}",
        )
    from boto3.exceptions import Boto3Error
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    size = video_path.stat().st_size
    digest = sha256 or sha256_file(video_path)
    key = f"{settings.bucket_prefix}{job_id}/{video_path.name}"
    bucket = settings.bucket_name
    expiry = min(int(settings.url_expiry), MAX_PRESIGN_SECONDS)
    if expiry != settings.url_expiry:
        log.warning("job %s: URL_EXPIRY=%s is over the SigV4 maximum; links expire after %s s", job_id, settings.url_expiry, expiry)

    started = time.monotonic()
    try:
        client = _s3_client(
            settings.bucket_endpoint_url, settings.bucket_region, settings.bucket_access_key_id, settings.bucket_secret_access_key
        )
        client.upload_file(
            str(video_path),
            bucket,
            key,
            ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": digest}},
            Config=TransferConfig(
                multipart_threshold=UPLOAD_PART_BYTES, multipart_chunksize=UPLOAD_PART_BYTES, max_concurrency=UPLOAD_CONCURRENCY
            ),
        )
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry)
    except (Boto3Error, BotoCoreError, ClientError, OSError, ValueError) as exc:
        message = describe_upload_error(exc, settings)
        log.warning("job %s: upload to bucket %r failed: %s", job_id, bucket, message)
        raise TenexaError(ErrorCode.UPLOAD_FAILED, f"upload to bucket {bucket!r} failed: {message}") from None
    log.info("job %s: uploaded %d bytes to %s/%s in %.2f s", job_id, size, bucket, key, time.monotonic() - started)
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=expiry)
    return {
        "delivery": "url",
        "video_url": url,
        "object_key": key,
        "bucket": bucket,
        "expires_at": expires_at.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "size_bytes": size,
        "sha256": digest,
    }


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint_url: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """One client per bucket configuration (building one loads botocore's service model, ~0.1 s)."""
    import boto3
    from botocore.config import Config

    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.WARNING)
    config = Config(
        region_name=region or "us-east-1",
        signature_version="s3v4",
        # Path-style (endpoint/bucket/key) works on R2, MinIO, B2 and moto without wildcard DNS.
        s3={"addressing_style": "path"},
        # Short timeouts and few retries: an unreachable endpoint must fail the job in seconds, not minutes.
        connect_timeout=3,
        read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},
        # botocore >= 1.36 adds CRC checksums by default, which several S3-compatible stores reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )


_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def describe_upload_error(exc: BaseException, settings: Settings) -> str:
    """One line naming what went wrong (S3 error code when there is one), with no credential in it."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

    root: BaseException = exc
    seen = 0
    while not isinstance(root, ClientError) and (root.__cause__ or root.__context__) and seen < 5:
        root = root.__cause__ or root.__context__  # S3UploadFailedError wraps the ClientError
        seen += 1
    if isinstance(root, ClientError):
        error = root.response.get("Error", {})
        code = error.get("Code") or str(root.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "error"))
        text = f"{code}: {error.get('Message') or 'no message'}"
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"}:
            text += " (check BUCKET_ACCESS_KEY_ID / BUCKET_SECRET_ACCESS_KEY and the bucket's permissions)"
        elif code in {"NoSuchBucket", "404"}:
            text += " (check BUCKET_NAME; the bucket must exist)"
    elif isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        text = f"cannot reach BUCKET_ENDPOINT_URL ({type(exc).__name__})"
    elif isinstance(exc, NoCredentialsError):
        text = "no credentials: set BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return scrub(text, settings)


def scrub(text: str, settings: Settings) -> str:
    """Drop credentials from text bound for a log line or a response."""
    text = _URL_USERINFO.sub(r"\g<scheme>", text)
    for secret in settings.secrets():
        text = text.replace(secret, "***")
    return " ".join(text.split())
