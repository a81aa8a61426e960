from backupd.main import main

raise SystemExit(main())
