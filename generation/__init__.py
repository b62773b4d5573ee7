"""The generation app: jobs, their API, pages, GPU actors and admin."""
