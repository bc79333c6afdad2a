from libs.runtime import run
from services.scaler.service import SERVICE

run(SERVICE)
