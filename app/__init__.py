"""spikeboard for people and scripts: the REST API, the server and (later) the dashboard."""
