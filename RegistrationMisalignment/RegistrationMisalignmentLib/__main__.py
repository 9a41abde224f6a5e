"""Allow `python -m RegistrationMisalignmentLib`."""
import sys

from .cli import main

sys.exit(main())
