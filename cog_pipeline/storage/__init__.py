"""Storage: the configured S3 client, what an endpoint honours, the demo's local S3 server."""
