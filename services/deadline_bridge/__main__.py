from libs.runtime import run
from services.deadline_bridge.service import main

run(main)
