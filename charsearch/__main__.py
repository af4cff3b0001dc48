import sys

from charsearch.cli import main

sys.exit(main())
