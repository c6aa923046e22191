from rfm_assets.cli import main

raise SystemExit(main())
