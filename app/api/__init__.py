"""REST routers, assembled in `app.api.router`."""
