import sys

from zoft.cli import main

sys.exit(main())
