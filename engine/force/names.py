"""The FORCE experiments' names, without torch: the API's schemas need only the
names (for their Literal), and through them the REST client and `spikeboard runs`,
which should start in a fraction of a second on a laptop. engine.force.experiments
registers one runner per name; a test keeps the two equal."""

EXPERIMENT_NAMES = ("alpha", "bias_variance", "grid", "pca", "size", "train", "transfer", "transfer_protocols")
