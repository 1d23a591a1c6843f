"""TensorFlow building blocks shared by the strategies."""
