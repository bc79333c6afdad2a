from libs.runtime import run
from services.job.service import main

run(main)
