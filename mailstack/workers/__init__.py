"""SMTP worker processes: `parent` runs in `serve` (hand-off, supervision), `child` is the
process it starts (`python -m mailstack.workers.child`)."""
