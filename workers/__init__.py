"""Celery workers: the service runs the pipeline stages as tasks on the cpu and gpu queues."""
