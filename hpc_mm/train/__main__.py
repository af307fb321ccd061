import os
import sys

from hpc_mm.train.loop import main

rc = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)
