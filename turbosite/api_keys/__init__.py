"""API keys: several named keys per user, hashed at rest, shown once, optional expiry, last use, revocable,
optionally read-only. Sent as `Authorization: Bearer <key>` (or `Token <key>`)."""
