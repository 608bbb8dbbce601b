"""``python -m aepurify``: the command line, also the form torchrun starts
(``torchrun --nproc-per-node N -m aepurify evaluate ...``)."""

from .cli import main

main()
