from hpc_mm.train.loop import main

raise SystemExit(main())
