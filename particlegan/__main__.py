"""``python -m particlegan`` runs the CLI."""
from .cli import main

main()
