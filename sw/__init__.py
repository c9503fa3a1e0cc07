"""Host side: compiler, driver and backends, CLI."""
