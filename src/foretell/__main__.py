"""``python -m foretell`` runs the command line."""

from foretell.cli import main

main()
