"""``python -m audioclip.training`` (what ``torchrun -m audioclip.training finetune ...`` runs)."""

from .cli import main

main()
