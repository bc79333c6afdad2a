"""The upload service starts on its own S3 buckets."""

from __future__ import annotations

from libs.runtime import build
from libs.s3 import S3Client, open_s3
from services.upload.service import SERVICE
from services.upload.settings import UploadSettings
from tests.conftest import Env


async def test_the_service_creates_its_buckets_at_start(env: Env) -> None:
    settings = env.settings(UploadSettings)
    rt = await build(SERVICE, settings)
    await rt.launch()
    try:
        s3: S3Client = rt.wired.s3
        for bucket in (settings.s3_scenes_bucket, settings.s3_outputs_bucket):
            await s3.head_bucket(Bucket=bucket)
    finally:
        await rt.stop()
    async with open_s3(settings) as s3:
        rules = await s3.get_bucket_lifecycle_configuration(Bucket=settings.s3_scenes_bucket)
        assert rules["Rules"][0]["Status"] == "Enabled"
