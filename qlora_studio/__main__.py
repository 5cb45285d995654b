from qlora_studio.cli import main

raise SystemExit(main())
