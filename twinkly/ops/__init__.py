"""Operating Twinkly: status, metrics, the HTTP server and dashboard, the admin console,
the manhole and protocol traces."""
