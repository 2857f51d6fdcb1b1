"""The SMTP protocol core (RFC 5321 and its service extensions)."""
