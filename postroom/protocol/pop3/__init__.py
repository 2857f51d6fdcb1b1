"""The POP3 protocol core (RFC 1939, with CAPA, STLS, AUTH and response
codes from RFC 2449, 2595, 5034 and 3206)."""
