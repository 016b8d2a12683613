import sys

from lab.node.agent import main

sys.exit(main())
