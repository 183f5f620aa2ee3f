import sys

from vaultcli.main import main

sys.exit(main())
