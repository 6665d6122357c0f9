"""brt_keras: the Block-Recurrent Transformer in Keras 3."""
