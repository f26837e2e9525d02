"""raygan: Ray-distributed hyperparameter search for fine-tuning pretrained conditional GANs."""

__version__ = "0.1.0"
