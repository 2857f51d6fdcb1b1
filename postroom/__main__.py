from postroom.cli.main import main

raise SystemExit(main())
