from libs.runtime import run
from services.wallet.service import SERVICE

run(SERVICE)
