import os
import sys
import traceback

from hpc_mm.train.loop import main

# Leave through os._exit whatever happens: the interpreter's own exit joins the DataLoader's worker
# processes, and after a peer's crash (gloo: "Connection closed by peer") that join can wait for
# ever, so that the step ends only when the hang watchdog kills it. The workers end with us.
try:
    rc = main()
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, int) and exc.code is not None:
        print(exc.code, file=sys.stderr)
except BaseException:  # noqa: BLE001 (any error: say it, and leave at once)
    traceback.print_exc()
    rc = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)
