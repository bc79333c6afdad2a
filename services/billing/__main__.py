from libs.runtime import run
from services.billing.service import SERVICE

run(SERVICE)
