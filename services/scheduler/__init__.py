"""scheduler: the process manager that takes a job from submission to its render's end."""
