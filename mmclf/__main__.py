import sys

from mmclf.cli import main

sys.exit(main())
