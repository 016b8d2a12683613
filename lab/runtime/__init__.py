"""What every layer runs on: the lab clock and the event bus. Imports nothing of lab but errors."""
