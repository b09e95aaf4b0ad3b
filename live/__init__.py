"""live-classroom server: app factory, config, CLI, auth, and (next) the media SFU."""
