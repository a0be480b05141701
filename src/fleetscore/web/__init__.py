"""The web app: ingest API, dashboard pages, JSON API and metrics, built by one app factory."""
