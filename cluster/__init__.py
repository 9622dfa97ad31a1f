"""shardflow.cluster: where jobs run (embedded local Ray, or a cluster by address)."""
