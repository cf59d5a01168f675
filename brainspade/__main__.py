from brainspade.cli import main

raise SystemExit(main())
