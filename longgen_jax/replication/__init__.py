"""The LongGen replication study: corpus, synthetic retrieval data, driver, report (docs/replication.md)."""
