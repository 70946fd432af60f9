"""The Flask app: factory, error handlers, OpenAPI, and the views by audience
(ingest, query, admin, health). The top of the service's layers."""
