"""``python -m aepurify.cli``."""

from . import main

main()
