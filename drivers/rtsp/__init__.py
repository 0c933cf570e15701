"""rtsp driver."""
