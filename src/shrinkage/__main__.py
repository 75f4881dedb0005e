from shrinkage.cli.main import main

raise SystemExit(main())
