"""The model layer: the zoo, loading users' files, the Keras graph read into a pure layer
graph (`graph`, `cuts`: no TensorFlow), FLOPs, the zoo-model cache and head/tail
splits."""
