"""The query path without Ray: encode the text with Fast, search each index shard, merge, re-rank with Slow."""
