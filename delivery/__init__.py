"""Storage and delivery: the Maildir store, local delivery, the outbound queue."""
