"""shardflow.pipelines: the jobs, each a Ray Data DAG built from a validated config."""
