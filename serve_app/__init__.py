"""The Ray Serve application (ingress, query encoder, retriever shards, re-ranker). Filled in by the serving issue."""
