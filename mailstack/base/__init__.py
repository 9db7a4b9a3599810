"""The ground floor: configuration, the state-dir layout, errors, accounts, the login throttle,
durable file writes and logging. Everything above may import it; it imports nothing of ours
from above (tests/test_layering.py checks the direction)."""
