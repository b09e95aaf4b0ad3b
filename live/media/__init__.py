"""Media: a pass-through SFU on aiortc. Publishers' RTP is forwarded to viewers, never decoded."""
