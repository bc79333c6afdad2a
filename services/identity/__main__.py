from libs.runtime import run
from services.identity.service import SERVICE

run(SERVICE)
