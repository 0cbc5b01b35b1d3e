"""What several test groups share: repositories, servers, tiny models, fractal fixtures."""
