from libs.runtime import run
from services.payments.service import SERVICE

run(SERVICE)
