"""shardflow.output: where a run's rows go, how a rerun tells finished shards from the rest, and the manifest."""
