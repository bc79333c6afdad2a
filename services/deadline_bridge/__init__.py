"""deadline-bridge: the Deadline Web Service client that turns farm activity into events."""
