"""Object storage: one S3 client per process, set up from settings alone.

Production points at AWS S3, MinIO or R2 by settings (endpoint, region, buckets,
credentials, path or virtual-host addressing); ``make up`` and the tests point at a local
MiniStack (``deploy/local/servers.py``: :func:`start_s3`), which checks signatures, expiry
and checksums as S3 does (ADR 0009).

Every client signs with SigV4 (``s3v4``; without it botocore makes SigV2 URLs for a custom
endpoint) and sends checksums only when an operation requires one (botocore >= 1.36 sends
CRC32 by default, which several S3-compatible stores refuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field, SecretStr

from libs.config import BaseServiceSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client as S3Client
else:
    S3Client = object

#: S3's cap on a presigned URL's life (SigV4): 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: Prefix of scene uploads in the scenes bucket; the lifecycle safety net covers it.
UPLOADS_PREFIX = "uploads/"


class S3Settings(BaseServiceSettings):
    """Where objects live. Empty ``s3_endpoint_url`` means AWS S3 itself."""

    s3_endpoint_url: str = "http://127.0.0.1:14570"
    #: The store's address as clients reach it, for presigned URLs (the host is signed);
    #: empty when it is the same as ``s3_endpoint_url`` (AWS, R2, a public MinIO).
    s3_public_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "test"
    s3_secret_access_key: SecretStr = SecretStr("test")
    #: ``path`` for local and most compatible servers, ``virtual`` for AWS, ``auto`` lets
    #: botocore choose.
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_scenes_bucket: str = "rf-scenes"
    s3_outputs_bucket: str = "rf-outputs"
    #: Incomplete multipart uploads older than this are aborted by the store's own
    #: lifecycle rule: the safety net under the upload sweeper (whole days, run ~daily).
    s3_abort_incomplete_days: int = Field(default=7, ge=1)
    s3_max_connections: int = Field(default=50, ge=1)
    #: Create missing buckets and their lifecycle rule at start (off where buckets are
    #: provisioned by infrastructure code).
    s3_create_buckets: bool = True


def client_config(settings: S3Settings) -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=settings.s3_max_connections,
        retries={"max_attempts": 5, "mode": "standard"},
    )


@contextlib.asynccontextmanager
async def open_s3(settings: S3Settings, *, public: bool = False) -> AsyncIterator[S3Client]:
    """The process's S3 client (open it once, at start). ``public`` names the store by
    ``s3_public_endpoint_url``: a client that only presigns URLs for clients."""
    endpoint = (settings.s3_public_endpoint_url if public else "") or settings.s3_endpoint_url
    session = aioboto3.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        region_name=settings.s3_region,
    )
    async with session.client(
        "s3",
        endpoint_url=endpoint or None,
        config=client_config(settings),
    ) as client:
        yield client


def error_code(e: ClientError) -> str:
    """The S3 error code of a failed call (``NoSuchUpload``, ``404``, ...)."""
    return str(e.response.get("Error", {}).get("Code", ""))


async def ensure_buckets(s3: S3Client, settings: S3Settings) -> None:
    """Create the scenes and outputs buckets if missing, with the lifecycle rule that
    aborts incomplete multipart uploads after ``s3_abort_incomplete_days``."""
    for bucket in (settings.s3_scenes_bucket, settings.s3_outputs_bucket):
        try:
            await s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                await s3.create_bucket(Bucket=bucket)
        await s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "abort-incomplete-multipart-uploads",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {
                            "DaysAfterInitiation": settings.s3_abort_incomplete_days
                        },
                    }
                ]
            },
        )
