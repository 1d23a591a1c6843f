"""tf_decentral: decentralized and asynchronous training as tf.distribute strategies.

The topology math (`tf_decentral.topology`) is NumPy only and importing it
never imports TensorFlow.
"""

__version__ = "0.1.0"
