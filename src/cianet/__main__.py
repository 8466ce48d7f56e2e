import sys

from cianet.cli import main

sys.exit(main())
