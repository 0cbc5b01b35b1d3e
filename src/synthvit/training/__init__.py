"""Training: the loop, its resumable state, multi-process runs, and the stages' shared runner."""
