"""The Event Webhook: posting events to customers' HTTP endpoints.

``endpoints.py`` manages the endpoints and replays (rows), ``signing.py``
signs and verifies the posts, ``sender.py`` is the task that posts.
"""
