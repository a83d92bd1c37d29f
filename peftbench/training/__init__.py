"""One run: its typed config, the training loop, losses, speed settings, devices, inference, and the trained
state kept and loaded back (load_run)."""
