"""Signed webhooks (Standard Webhooks scheme): subscriptions made at job creation, deliveries sent by a Dramatiq
actor on its own "webhooks" queue, an attempt log, the per-user signing secret and the SSRF guard."""
