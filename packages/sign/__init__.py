"""Sign-language recognition from MediaPipe landmarks."""
