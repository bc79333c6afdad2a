from libs.runtime import run
from services.identity.service import main

run(main)
