from libs.s3 import S3Settings


class UploadSettings(S3Settings):
    env_section = "upload"
    service_name: str = "upload"
