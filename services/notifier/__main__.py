from libs.runtime import run
from services.notifier.service import SERVICE

run(SERVICE)
