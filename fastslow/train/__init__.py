"""Training: one run in this process (run.py) over the Fast, Slow and distillation objectives, the loop, the losses."""
