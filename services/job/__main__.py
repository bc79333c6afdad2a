from libs.runtime import run
from services.job.service import SERVICE

run(SERVICE)
