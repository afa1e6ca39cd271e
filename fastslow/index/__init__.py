"""FAISS indexes: sharded build and search (`shards`), versioned publishing and verified loading (`publish`)."""
