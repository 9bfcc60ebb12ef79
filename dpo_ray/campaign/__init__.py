"""The driver side: runs groups through offline training (and, later, online rounds)."""
