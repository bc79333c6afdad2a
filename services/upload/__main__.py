from libs.runtime import run
from services.upload.service import SERVICE

run(SERVICE)
