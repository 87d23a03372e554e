"""``python -m particlegan`` runs the CLI."""
from particlegan.cli import main

main()
