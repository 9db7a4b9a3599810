"""SMTP: inbound MX on port 25 and (later) submission on 587/465, built on aiosmtpd."""
