"""What the long-running processes tell an operator: Prometheus metrics over HTTP (`exposition`) and
structured JSON logs carrying the request id (`logs`). Standard library + prometheus_client only."""
