"""The pure analyzer: links, traces, the T/E cost model over every cut, objectives and
partitions, the DAG min-cut, sensitivity. Imports numpy, scipy and networkx only: never
TensorFlow, Keras or gRPC (checked by import-linter)."""
