"""The run pipeline: the run folder contract (RunDir), the stage registry and runner, the report."""
