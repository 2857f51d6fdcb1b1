"""Delivery: from the queue to each recipient's provider (see
docs/architecture.md, "Delivery")."""
