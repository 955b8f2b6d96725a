import sys

from engine.trainer.main import main

sys.exit(main())
