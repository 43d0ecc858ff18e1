"""What every service runs on: the batch projector and its faust worker, the outbox, the clock,
PostgreSQL, HTTP, metrics, logs and configuration (`crm-shared[runtime]`)."""
