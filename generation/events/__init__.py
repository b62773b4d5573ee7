"""Pushed progress: job changes published on a bus (Redis pub/sub, or in process on the embedded default) and
served as Server-Sent Events at GET /api/v1/jobs/{id}/events."""
