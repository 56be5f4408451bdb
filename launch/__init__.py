"""Job submission: render a plain launch script (local, torchrun, deepspeed, SLURM) and run it."""
