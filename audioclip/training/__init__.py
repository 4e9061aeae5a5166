"""Fine-tuning and evaluation of the audio head (used by the ``audioclip-train`` CLI only)."""
