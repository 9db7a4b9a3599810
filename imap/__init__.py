"""IMAP4rev1/IMAP4rev2 server: sans-IO protocol core plus a thin asyncio transport."""
