from libs.runtime import run
from services.gateway.service import main

run(main)
