"""The ground floor: configuration, the state-dir layout, errors, accounts, the one login path
(SASL PLAIN, the throttle, the verifier pool), durable file writes and logging. Everything
above may import it; it imports nothing of ours from above (tests/test_layering.py checks the
direction)."""
