"""CNIMigration: the pure parts (spec model, waves, per-node step machine, the
compatibility check, which pods to evict). docs/migration.md says what is built."""
