"""S3 Asynchronous: the API queues a job and answers at once; a Celery worker predicts later."""
