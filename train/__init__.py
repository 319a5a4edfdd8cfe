"""Training, evaluation and conversion scripts (run as `python train/<script>.py`) and their shared helpers."""
