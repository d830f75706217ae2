"""Entry point of ``python -m generator_service.finetune``."""

import sys

from generator_service.finetune.cli import main

sys.exit(main())
