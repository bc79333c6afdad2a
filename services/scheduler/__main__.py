from libs.runtime import run
from services.scheduler.service import main

run(main)
