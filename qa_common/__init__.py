"""Code every service needs: error envelope, request ids, logging, config and the HTTP client."""
