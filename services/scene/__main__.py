from libs.runtime import run
from services.scene.service import SERVICE

run(SERVICE)
