"""The pipeline's data: the trajectory store and its provenance, stores set aside, the conditions
file, training batches, the background writer, forward-noised data, and the assets (MNIST,
captions, wheels) they come from."""
