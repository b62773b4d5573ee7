"""A job's life beyond the state machine, as programs ask for it: Cancel-After deadlines and `Prefer: wait`."""
