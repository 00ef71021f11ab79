"""Scripts run under Dagster Pipes (a local subprocess or an Azure ML job): no Dagster import."""
