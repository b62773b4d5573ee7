"""Server-rendered pages: the new-video form, the history gallery and one job's page."""
