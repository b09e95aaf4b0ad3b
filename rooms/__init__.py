"""What happens in a room: membership and roles, chat, presence, and the room event bus."""
