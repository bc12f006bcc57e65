import sys

from inform_fast.cli import main

sys.exit(main())
