-- The MLflow server keeps its runs and registry in a database of its own beside Reclaim's.
CREATE DATABASE mlflow;
