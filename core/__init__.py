"""What every layer shares and nothing of the project's own: the job-directory contract (core/jobdir.py)."""
