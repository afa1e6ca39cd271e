"""Finding and using a Ray cluster (address, runtime env, storage root, resources). Filled in by the cluster issue."""
