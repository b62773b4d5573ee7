"""Routes of the system TurboSite replaces (seed runbook section 7), kept working."""
