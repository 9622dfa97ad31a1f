"""shardflow.operators: one module per capability, each usable as a Ray Data operator."""
