"""MLflow bookkeeping: records what stages did, never changes what they compute (no DVC dependency)."""
