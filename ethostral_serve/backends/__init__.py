"""Model backends behind small Protocols (see ``base``); chosen by name in settings."""
