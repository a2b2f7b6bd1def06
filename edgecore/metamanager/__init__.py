"""MetaManager: everything the cloud sent, kept in SQLite so the node runs on without the cloud."""
